"""Pure domain logic: jobs, their state machine, matching and validation. Imports neither grpc nor the store."""
