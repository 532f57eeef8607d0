"""Why a TLS handshake failed, in words an operator can act on, when a retry cannot cure it.

Python reports a failed handshake as ``ssl.SSLError``, a subclass of ``OSError``: the same
family as a refused or reset connection, which the adapters rightly retry. A certificate
the client does not trust, or a server that will not take the client's certificate, is
different: it fails the same way every time, so retrying it would only hide it behind
"waiting for Kafka" forever. ``refusal`` tells the two apart.
"""

from __future__ import annotations

import ssl

#: OpenSSL's X509_V_ERR_* codes for the server certificate problems a client sees, and
#: what to say about each.
_VERIFY_REASONS = {
    2: "unknown CA: the server's certificate chain does not end at a trusted CA",
    18: "unknown CA: the server's certificate is self-signed and not trusted",
    19: "unknown CA: the server's certificate chain ends at an untrusted root",
    20: "unknown CA: the server's certificate is not signed by a trusted CA",
    21: "unknown CA: the server's certificate is not signed by a trusted CA",
    9: "the server's certificate is not valid yet",
    10: "the server's certificate has expired",
    62: "hostname mismatch: the server's certificate does not name this host",
    64: "hostname mismatch: the server's certificate does not name this IP address",
}

#: TLS alerts a server sends when it refuses the client's certificate (or the lack of
#: one), and handshake errors that no retry changes. Not among them: WRONG_VERSION_NUMBER
#: (a plaintext answer), which a load balancer's error page gives during a failover too.
_REFUSED_BY_SERVER = {
    "TLSV13_ALERT_CERTIFICATE_REQUIRED": "the server requires a client certificate",
    "SSLV3_ALERT_BAD_CERTIFICATE": (
        "the server refused the client certificate (none was given, or it is not signed "
        "by a CA the server trusts)"
    ),
    "TLSV1_ALERT_UNKNOWN_CA": "the server does not trust the CA of the client certificate",
    "SSLV3_ALERT_CERTIFICATE_EXPIRED": "the server says the client certificate has expired",
    "SSLV3_ALERT_CERTIFICATE_UNKNOWN": "the server refused the client certificate",
    "TLSV1_ALERT_ACCESS_DENIED": "the server denied access to this client certificate",
    "SSLV3_ALERT_HANDSHAKE_FAILURE": "the server and client share no TLS version or cipher",
    "TLSV1_ALERT_PROTOCOL_VERSION": "the server and client share no TLS version",
}


def refusal(error: BaseException) -> str | None:
    """The reason, when ``error`` (or what caused it) is a TLS failure that will repeat on
    every attempt; None for anything a retry may cure (a reset, a timeout, a closed port)."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ssl.SSLCertVerificationError):
            reason = _VERIFY_REASONS.get(current.verify_code)
            return reason or f"certificate verify failed: {current.verify_message}"
        # getattr: an SSLError made by other code than OpenSSL's may have no reason.
        alert = getattr(current, "reason", None) if isinstance(current, ssl.SSLError) else None
        if alert in _REFUSED_BY_SERVER:
            return f"{_REFUSED_BY_SERVER[alert]} ({alert})"
        current = current.__cause__ or current.__context__
    return None
