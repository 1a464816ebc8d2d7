"""The sync engine: render visits into events, claim and run outbox jobs, sweep for gaps."""
