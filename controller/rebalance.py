"""PURE: which replica to move so a deployment's spread heals (issue 15; filled in by the
rebalance work)."""
