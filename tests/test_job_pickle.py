"""Jobs queued before the modules moved into rooms are pickled naming `orchestrator.job.CellJob`: they must still
unpickle (submitit loads the pickle in the job process) into the class that now lives in orchestrator.submit.job.

The bytes are written by hand as submitit's pickles are (protocol 2, GLOBAL names the module as text), so the old
path is in the test itself and not produced by the code under test.
"""

from __future__ import annotations

import pickle
import pickletools

import submitit

from orchestrator.submit.job import CellJob

# pickle.dumps(CellJob(), 2) as it was before the move
OLD_JOB = b"\x80\x02corchestrator.job\nCellJob\nq\x00)\x81q\x01."
# pickle.dumps(submitit.helpers.DelayedSubmission(CellJob(), "/x/spec.json"), 2) as it was before the move
OLD_SUBMISSION = (
    b"\x80\x02csubmitit.core.utils\nDelayedSubmission\nq\x00)\x81q\x01}q\x02(X\x08\x00\x00\x00functionq\x03"
    b"corchestrator.job\nCellJob\nq\x04)\x81q\x05X\x04\x00\x00\x00argsq\x06X\x0c\x00\x00\x00/x/spec.jsonq\x07"
    b"\x85q\x08X\x06\x00\x00\x00kwargsq\t}q\nX\x07\x00\x00\x00_resultq\x0bNX\x05\x00\x00\x00_doneq\x0c\x89"
    b"X\x0c\x00\x00\x00_timeout_minq\rK\x00X\x12\x00\x00\x00_timeout_countdownq\x0eK\x00ub."
)


def globals_named(data: bytes) -> list[str]:
    return [str(arg) for op, arg, _ in pickletools.genops(data) if op.name == "GLOBAL"]


def test_the_hand_written_pickles_name_the_old_module() -> None:
    assert globals_named(OLD_JOB) == ["orchestrator.job CellJob"]
    assert "orchestrator.job CellJob" in globals_named(OLD_SUBMISSION)


def test_a_job_pickled_with_the_old_path_unpickles_into_the_moved_class() -> None:
    job = pickle.loads(OLD_JOB)
    assert type(job) is CellJob and CellJob.__module__ == "orchestrator.submit.job"
    submission = pickle.loads(OLD_SUBMISSION)
    assert isinstance(submission, submitit.helpers.DelayedSubmission)
    assert type(submission.function) is CellJob and submission.args == ("/x/spec.json",)


def test_new_pickles_name_the_room() -> None:
    assert globals_named(pickle.dumps(CellJob(), 2)) == ["orchestrator.submit.job CellJob"]
