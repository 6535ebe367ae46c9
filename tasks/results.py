"""Typed stage results: status (OK / FAILED / SKIPPED), reason, URIs and metrics, XCom-sized."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any


class Status(StrEnum):
    OK = "OK"
    FAILED = "FAILED"
    SKIPPED = "SKIPPED"


@dataclass(frozen=True)
class StageResult:
    """What one stage returns: small enough for XCom, JSON-safe via `to_dict`.

    `uris` names published artifacts (S3 URIs); `metrics` holds numbers and short strings.
    A result is truthy when its status is OK.
    """

    stage: str
    status: Status
    reason: str = ""
    variant: str = ""
    uris: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return self.status is Status.OK

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["status"] = self.status.value
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StageResult:
        return cls(
            stage=data["stage"],
            status=Status(data["status"]),
            reason=data.get("reason", ""),
            variant=data.get("variant", ""),
            uris=dict(data.get("uris", {})),
            metrics=dict(data.get("metrics", {})),
        )
