"""Test doubles shared by the papers' claim tests."""


class RecordingReporter:
    """Stands in for report.Reporter in the claims code: records what `decide` and `check` are given."""

    def __init__(self):
        self.decided = []   # (claims.Claim, claims.Decision)
        self.checks = []    # (claim text, passed, detail, measured, keyword fields)

    def decide(self, claim, decision):
        self.decided.append((claim, decision))
        return decision.passed

    def check(self, claim, passed, detail, measured=None, **fields):
        self.checks.append((claim, bool(passed), detail, measured, fields))
        return bool(passed)
