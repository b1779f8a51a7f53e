"""Pure domain core: identities, plans, orders and the activation state machine.

Nothing here does I/O or imports asyncio, SQL, HTTP, prometheus or pyrad
(tests/unit/test_core_purity.py checks it).
"""
