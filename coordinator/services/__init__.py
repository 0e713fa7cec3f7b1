"""Thin gRPC servicers: proto in, a scheduler call, proto out. Rules live in the domain and scheduler."""
