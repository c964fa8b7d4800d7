"""What happened to the input lines: accepted, duplicate, blank, rejected by reason."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class Tally:
    """What happened to the input lines since the store was created."""

    accepted: int = 0
    duplicate: int = 0
    blank: int = 0
    rejected: dict[str, int] = field(default_factory=dict)

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())

    def add(self, other: Tally) -> None:
        self.accepted += other.accepted
        self.duplicate += other.duplicate
        self.blank += other.blank
        for reason, n in other.rejected.items():
            self.rejected[reason] = self.rejected.get(reason, 0) + n

    def counters(self) -> dict[str, int]:
        out = {
            "events_accepted": self.accepted,
            "events_duplicate": self.duplicate,
            "lines_blank": self.blank,
        }
        out.update({f"rejected.{reason}": n for reason, n in self.rejected.items()})
        return {k: v for k, v in out.items() if v}
