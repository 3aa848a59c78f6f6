"""Mirrored puts are applied on a rank in the order the control rank sent them, per port.

CI saw ophyd-async's HDF writer time out on a cluster: FilePath's put awaits a check of the
folder off the event loop, and the Capture=1 sent after it started meanwhile, found no folder
and was refused ("give an absolute path")."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from ndflow.cluster.mirror import PutApplier, Reporter


class Writer:
    """A stand-in for a file writer: FilePath's put awaits a check, Capture=1 needs it set,
    Capture=1 itself runs on (a busy put)."""

    port = "FileHDF1"

    def __init__(self) -> None:
        self.params = {n: SimpleNamespace(name=n) for n in ("FilePath", "Capture", "FileName")}
        self.values: dict[str, Any] = {"FilePath": "", "Capture": 0, "FileName": ""}
        self.order: list[str] = []

    async def handle_put(self, param: Any, value: Any) -> Any:
        if param.name == "FilePath":
            await asyncio.sleep(0.05)  # the folder checked in an executor
        if param.name == "Capture" and value:
            if not self.values["FilePath"]:
                raise ValueError("give an absolute path")
            self.values["Capture"] = 1
            self.order.append("Capture")
            await asyncio.sleep(3600)  # runs until the capture ends
        self.values[param.name] = value
        self.order.append(param.name)
        return value


def test_a_put_is_not_overtaken_by_the_next_one_to_its_port():
    writer = Writer()
    answers: list[dict] = []

    async def main() -> None:
        applier = PutApplier({writer.port: writer}, Reporter([]), answers.append)
        applier.apply({"port": writer.port, "name": "FilePath", "value": "/data/"})
        applier.apply({"port": writer.port, "name": "Capture", "value": 1, "reply": 7})
        applier.apply({"port": writer.port, "name": "FileName", "value": "next"})
        for _ in range(100):
            await asyncio.sleep(0.02)
            if len(writer.order) == 3 and answers:
                break

    asyncio.run(main())
    assert answers and answers[0]["ok"], answers  # Capture found the folder
    assert writer.order == ["FilePath", "Capture", "FileName"]  # a busy put does not hold
    # the port's later puts for good (it is answered after BUSY_PUT_ANSWER)
