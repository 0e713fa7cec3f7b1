"""Job.snapshot: the copy answers and watchers get must hold every field, and must not follow later changes."""

import dataclasses

from coordinator.domain.model import Constraints, Job, JobState, PayloadKind


def _job_with_no_defaults() -> Job:
    """A job whose every field differs from its default, so a field the copy dropped would show."""
    values: dict[str, object] = {}
    for i, f in enumerate(dataclasses.fields(Job)):
        if f.type in ("int",):
            values[f.name] = 1000 + i
        elif f.type == "str":
            values[f.name] = f"value-{f.name}"
        elif f.type == "bytes":
            values[f.name] = f.name.encode()
        elif f.type == "bool":
            values[f.name] = True
    values.update(
        state=JobState.RUNNING,
        payload_kind=PayloadKind.STRUCT,
        constraints=Constraints(),
        metadata=(("team", "blue"),),
    )
    return Job(**values)  # type: ignore[arg-type]


def test_snapshot_holds_every_field_including_the_uncompared_ones():
    job = _job_with_no_defaults()
    copy = job.snapshot()
    assert copy is not job
    for f in dataclasses.fields(Job):  # (== skips in_queue and ttl_timed: compare=False)
        assert getattr(copy, f.name) == getattr(job, f.name), f.name
        assert getattr(copy, f.name) != f.default, f"{f.name} left at its default: the test would not see it"


def test_snapshot_does_not_follow_later_changes():
    job = _job_with_no_defaults()
    before = (job.state, job.attempt, job.miner_id, job.in_queue)
    copy = job.snapshot()
    job.state, job.attempt, job.miner_id, job.in_queue = JobState.COMPLETED, -1, "other", False
    assert (copy.state, copy.attempt, copy.miner_id, copy.in_queue) == before
