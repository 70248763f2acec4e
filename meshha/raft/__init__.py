"""The replicated segment state.

Pure:    `entries` (the log entries and their msgpack schema), `state` (the state machine
         every replica applies in log order), `records` (the frozen values it holds),
         `intent_key` (intent ids: one record, one text form), `log` (the log port, a
         Protocol).
Adapter: `pysyncobj_log` (pysyncobj over TCP, ticked from one owned thread), `journal`
         (its durable, fsynced journal), `transport` and `connections` (its bounded
         Raft port).
"""
