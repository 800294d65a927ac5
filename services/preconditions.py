"""What a conditional change requires of the current version of what it changes: HTTP's
`If-Match` and `If-None-Match` (api/preconditions.py reads them), or the version an agent's
tool read."""

from __future__ import annotations

from dataclasses import dataclass

from services.errors import PreconditionFailed


@dataclass(frozen=True)
class VersionCondition:
    """The change goes ahead only at one of `any_of` (None: at any version), and at none of
    `none_of`; `nothing_there` (`If-None-Match: *`) holds only where nothing exists, so
    never for a change of something that does, and `something_there` (`If-Match: *`) only
    where something does."""

    any_of: frozenset[int] | None = None
    none_of: frozenset[int] = frozenset()
    nothing_there: bool = False
    something_there: bool = False

    @classmethod
    def at(cls, version: int | None) -> VersionCondition | None:
        """Exactly this version, or no condition for None."""
        return None if version is None else cls(any_of=frozenset({version}))

    def check(self, what: str, current: int) -> None:
        """Raise 412, naming the current version, unless the change may go ahead."""
        if self.any_of is not None and current not in self.any_of:
            wanted = " or ".join(str(v) for v in sorted(self.any_of))
            self._refuse(f"the {what} is at version {current}, not {wanted}", current)
        if self.nothing_there:
            self._refuse(f"the {what} exists (If-None-Match: *)", current)
        if current in self.none_of:
            self._refuse(f"the {what} is at version {current} (If-None-Match)", current)

    def check_missing(self, what: str) -> None:
        """The same where nothing exists yet, which a change may create (a stream without
        events): it has no version, so `If-Match` fails, with tags or `*` (RFC 9110,
        13.1.1), and `If-None-Match` holds."""
        if self.any_of is not None or self.something_there:
            raise PreconditionFailed(f"the {what} does not exist yet (If-Match)")

    def check_unversioned(self, what: str = "the resource") -> None:
        """The same for something that exists but has no version (no ETag): no version the
        client lists can be its, and `nothing_there` fails as it does for any change."""
        if self.any_of is not None:
            raise PreconditionFailed(f"{what} has no ETag, so no If-Match tag can match it")
        if self.nothing_there:
            raise PreconditionFailed(f"{what} exists (If-None-Match: *)")

    @staticmethod
    def _refuse(detail: str, current: int) -> None:
        raise PreconditionFailed(detail, extra={"current_version": current})


def check(condition: VersionCondition | None, what: str, current: int) -> None:
    if condition is not None:
        condition.check(what, current)
