"""Generated from proto/aitbc/coordinator/v1: do not edit."""
