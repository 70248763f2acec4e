"""What to do about a failure, and doing it.

Pure:     `verdicts`, `policy`, `placement`, `decide` (a package: committed state in, entries
          to propose out, one module per failure kind, and `decide.check`, the decision
          invariants), `evacuation` (the evacuation pipeline's ordering, window and
          adaptive limit), `ports` (the interfaces the drivers implement).
Adapters: `executor` (carries out one committed intent through the ports),
          `fence_ipmi` (pyghmi), `nova` (openstacksdk), `alerts` (webhook, SMTP).
"""
