"""Steps run by the remote engine's workers.

For one step: the Action, the Command and whatever of the input tree the
server lacks go up; ``Execute`` runs it (or answers from the engine's own
cache); the result's blobs come down, checked, into the local store, where
the result is recorded like one that ran here.

What the server has lost in between (an input evicted after
``FindMissingBlobs``: ``FAILED_PRECONDITION`` naming missing blobs) is
uploaded again from the local store and the step is asked again; outputs
lost before they came down make the step run again. Either is transient.

Only wasm and native steps travel: a fetch runs where its credentials are
(here), its content then goes up like any input; a step that reads
secrets runs here, so no secret ever reaches the engine.
"""

from __future__ import annotations

from dataclasses import dataclass

from buildgrid.common.protos.google.rpc import code_pb2, error_details_pb2

from kiln.exec.base import TransientError
from kiln.exec.specs import RECURSIVE_PROPERTY
from kiln.model.action import shareable
from kiln.model.digest import Digest, canonical_bytes
from kiln.model.reapi import re_pb2
from kiln.remote.cache import RemoteCache, platform_of

REMOTE_KINDS = frozenset({"wasm", "native"})
RESENDS = 2  # times inputs the server lost are sent again for one step


@dataclass(frozen=True)
class RemoteRun:
    """How a remote execution went: the result, and whether the engine
    answered it from its cache instead of running it."""

    result: re_pb2.ActionResult
    cached: bool


def runs_remotely(kind: str, action: re_pb2.Action, command: re_pb2.Command) -> bool:
    """Whether a step of ``kind`` may run on the engine: never one that
    reads secrets, nor a recursive one (its requests need this build)."""
    platform = platform_of(action, command)
    return kind in REMOTE_KINDS and shareable(platform) and RECURSIVE_PROPERTY not in platform


class RemoteExecution:
    """Runs steps on one execution server, moving blobs through ``cas``
    (a ``RemoteCache`` over that same server)."""

    def __init__(self, cas: RemoteCache, *, skip_cache_lookup: bool = False) -> None:
        self.cas = cas
        self.client = cas.client
        self.skip_cache_lookup = skip_cache_lookup

    async def run(self, key: Digest, action: re_pb2.Action, command: re_pb2.Command) -> RemoteRun:
        """Execute action ``key``; its result's blobs end up in the local store."""
        messages = {
            Digest.of_message(action): canonical_bytes(action),
            Digest.of_message(command): canonical_bytes(command),
        }
        root = Digest.from_proto(action.input_root_digest)
        for attempt in range(RESENDS + 1):
            await self.cas.upload_with_tree(messages, root)  # one round of questions
            response = await self.client.execute(key, skip_cache_lookup=self.skip_cache_lookup)
            missing = _missing_blobs(response)
            if missing is not None and attempt < RESENDS:
                self.cas.forget(missing)  # the server lost them: send again
                continue
            if response.status.code != code_pb2.OK:
                code = code_pb2.Code.Name(response.status.code)
                raise TransientError(
                    f"remote {self.client.endpoint}: execution failed: "
                    f"{code} {response.status.message}".rstrip(),
                    hint="the engine's log says more; the step is not cached",
                )
            break
        result = response.result
        if not await self.cas.fetch_result(result, files=False):
            raise TransientError(
                f"remote {self.client.endpoint}: the outputs of {key} were lost before "
                "they could be downloaded"
            )
        if result.exit_code == 0:
            worker = result.execution_metadata.worker or "(unnamed)"
            origin = f"remote worker {worker} of {self.client.endpoint}"
            self.cas.record(key, result, origin, complete=False)
        elif not await self.cas.fetch_result(result):  # a failure's outputs, to look at
            raise TransientError(f"remote {self.client.endpoint}: lost the outputs of {key}")
        return RemoteRun(result, response.cached_result)


def _missing_blobs(response: re_pb2.ExecuteResponse) -> list[Digest] | None:
    """The blobs a ``FAILED_PRECONDITION`` answer says are missing; None
    when the answer is something else."""
    if response.status.code != code_pb2.FAILED_PRECONDITION:
        return None
    missing: list[Digest] = []
    for detail in response.status.details:
        failure = error_details_pb2.PreconditionFailure()
        if detail.Unpack(failure):
            for violation in failure.violations:
                if violation.type == "MISSING" and violation.subject.startswith("blobs/"):
                    hash_hex, _, size = violation.subject[len("blobs/") :].partition("/")
                    try:
                        missing.append(Digest(hash_hex, int(size)))
                    except ValueError:
                        continue
    return missing
