"""The YAML loader of every grid file and site profile: PyYAML's SafeLoader reading floats as YAML 1.2 does.

PyYAML implements YAML 1.1, whose float needs a dot (1.0e-1), so `lr: 1e-1` or `weight_decay: 5e-4` -- how
learning rates are written -- load as the strings '1e-1' and '5e-4'. YAML 1.2's core schema reads them as
floats, and so does this loader; everything else is SafeLoader's (ints, booleans, null, timestamps).
"""

from __future__ import annotations

import re
from typing import Any

import yaml

# YAML 1.2 core schema float (exponent form without a dot included), plus 1.1's underscores and .inf/.nan forms
FLOAT_1_2 = re.compile(
    r"""^(?:[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?(?:[eE][-+]?[0-9]+)
    |[-+]?\.[0-9_]+(?:[eE][-+]?[0-9]+)?)$""",
    re.X,
)


class SafeLoader12(yaml.SafeLoader):
    """yaml.SafeLoader plus the YAML 1.2 float forms YAML 1.1 lacks (1e-1, 5E+3, .5e-2)."""


# add_implicit_resolver copies the inherited table first, so yaml.SafeLoader itself is left as it was
SafeLoader12.add_implicit_resolver("tag:yaml.org,2002:float", FLOAT_1_2, list("-+0123456789."))


def safe_load(text: str) -> Any:
    """yaml.safe_load with SafeLoader12 (a site profile; grid files go through orchestrator.grid.files's bounded
    loader, a subclass)."""
    return yaml.load(text, Loader=SafeLoader12)  # SafeLoader12 is a SafeLoader: no arbitrary objects
