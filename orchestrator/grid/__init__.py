"""Grid files: parse, validate and expand (files), one document (document), names, the report section, run ids, site
profiles and devices."""
