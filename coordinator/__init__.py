"""The AITBC coordinator: a gRPC job coordinator with streaming miners and verifiable receipts."""
