"""TLS listeners from settings, and the certificate identity of a mutual-TLS peer.

gRPC either requires a client certificate from every peer of a listener or never asks for one. So:
- TLS_CERT_FILE + TLS_KEY_FILE: the listener speaks TLS.
- + TLS_CLIENT_CA_FILE: mutual TLS; every peer of the main listener presents a certificate issued by that CA,
  unless TLS_MINER_ADDRESS names a second listener: then only that one requires certificates, and miners
  must use it (their calls anywhere else carry no certificate and are refused).
A miner's certificate identity (its subject CN or any subject alternative name) must equal the identity
name of its API key.
"""

from __future__ import annotations

from pathlib import Path

import grpc

from ..config import Settings


def server_credentials(settings: Settings, *, require_client_cert: bool) -> grpc.ServerCredentials:
    pair = (Path(settings.tls_key_file).read_bytes(), Path(settings.tls_cert_file).read_bytes())
    ca = Path(settings.tls_client_ca_file).read_bytes() if require_client_cert else None
    return grpc.ssl_server_credentials([pair], root_certificates=ca, require_client_auth=require_client_cert)


def certificate_names(context: grpc.aio.ServicerContext) -> list[bytes]:
    """The verified peer certificate's subject CN and SANs; empty without a client certificate."""
    auth = context.auth_context()
    return [*auth.get("x509_common_name", ()), *auth.get("x509_subject_alternative_name", ())]
