"""The asyncio scheduler: ready queues, miner sessions, leases and timers."""
