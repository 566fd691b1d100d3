"""`edge-agent doctor`'s broker check: does each broker of the config accept the agent's login?

For every broker the config names (`[mqtt]` and each MQTT source) the doctor opens a real MQTT connection
with that client's own settings (protocol, username, password file, TLS files) and reads the CONNACK, so a
wrong password, a missing client certificate or a plain port where TLS is configured shows up before the
first alert instead of as a retry loop in the journal. The probe's client id is the agent's with `-doctor`
appended (`probe_client_id`: never one of the config's own ids on that broker), so a running agent is not
disconnected by it (a broker takes a second connection with the same client id as a takeover), and it sets
no Last Will: it ends with a clean DISCONNECT. A broker whose ACL ties client ids to users may refuse the
probe's id; the message says which id was tried. The broker's ACL on topics is not checked at login (a
broker applies it to each publish and subscribe), so a login the doctor calls accepted can still have its
alerts refused (`protocol = "5"` reports such refusals, docs/alerts.md).
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt

from edge_agent.configtools import ConfigError
from edge_agent.mqttloop import Login

REACH_DEADLINE_S = 5.0  # all broker probes together: a resolver that hangs must not hang the doctor
PROBE_TIMEOUT_S = 3.0  # one probe: TCP (and TLS) connect, then the CONNACK
PROBE_SUFFIX = "-doctor"
UPSTREAM = "upstream broker"  # BrokerTarget.what of the `[mqtt]` client


@dataclass(frozen=True)
class BrokerTarget:
    """A broker the config names and how the agent logs in to it. `login` reads the password file now
    (a `ConfigError` naming the key when it cannot); None checks only that the port answers."""

    what: str  # "upstream broker", "source NAME broker"
    host: str
    port: int
    probe_id: str = ""  # the probe's client id (`probe_client_id`); "": one the broker assigns
    protocol: str = "3.1.1"  # "3.1.1" or "5"
    login: Callable[[], Login] | None = None

    @property
    def where(self) -> str:
        return f"broker {self.host}:{self.port}"

    @property
    def upstream(self) -> bool:
        """The `[mqtt]` client (else a source)."""
        return self.what == UPSTREAM


@dataclass(frozen=True)
class BrokerAnswer:
    """What one probe found: `ok` (the login was accepted, or the port answers when no login was tried),
    the sentence for the report after the broker's address, and how to fix it."""

    ok: bool
    message: str
    fix: str = ""


def probe_brokers(targets: Sequence[BrokerTarget], reach: Callable[[BrokerTarget], BrokerAnswer],
                  deadline_s: float = REACH_DEADLINE_S) -> dict[BrokerTarget, BrokerAnswer]:
    """`reach` for each distinct target, all at once in daemon threads, waiting at most `deadline_s` in all
    (`socket.create_connection` cannot time-limit name resolution); a probe still running then reads as
    no answer."""
    results: dict[BrokerTarget, BrokerAnswer] = {}
    unique = list(dict.fromkeys(targets))

    def probe(target: BrokerTarget) -> None:
        results[target] = reach(target)

    threads = [threading.Thread(target=probe, args=(t,), daemon=True, name=f"doctor-probe-{i}")
               for i, t in enumerate(unique)]
    for thread in threads:
        thread.start()
    end = time.monotonic() + deadline_s
    for thread in threads:
        thread.join(max(0.0, end - time.monotonic()))
    answered = dict(results)
    return {t: answered.get(t) or BrokerAnswer(False, f"not reachable: no answer in {deadline_s:g} s",
                                               unreachable_fix(t.host)) for t in unique}


def unreachable_fix(host: str) -> str:
    return f"check host and port in the config, DNS (`getent hosts {host}`), the network and the broker"


def probe_client_id(agent_id: str, taken: set[str]) -> str:
    """The probe's client id for a client whose id is `agent_id` ("" stays "": broker-assigned): `-doctor`
    appended, and a number after it while that is one of the ids `taken` on the same broker (the config's
    own clients), so the probe can never take over a running client's connection."""
    if not agent_id:
        return ""
    candidate, number = f"{agent_id}{PROBE_SUFFIX}", 1
    while candidate in taken:
        number += 1
        candidate = f"{agent_id}{PROBE_SUFFIX}-{number}"
    return candidate


def _os_reason(exc: BaseException, host: str, timeout_s: float, tls: bool) -> str:
    if isinstance(exc, socket.gaierror):
        return f"not reachable: cannot resolve {host}: {exc.strerror or exc}"
    if isinstance(exc, TimeoutError | socket.timeout):
        return f"no answer in {timeout_s:g} s" + (" (TCP connect or TLS handshake)" if tls else "")
    if isinstance(exc, ssl.SSLCertVerificationError):
        why = getattr(exc, "verify_message", None) or exc.reason or exc
        return f"TLS handshake failed: the broker's certificate does not verify: {why}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS handshake failed: {exc.reason or exc}"
    if isinstance(exc, ConnectionResetError):
        return "reset the connection" + (" during the TLS handshake" if tls else "")
    if isinstance(exc, OSError):
        return f"not reachable: {exc.strerror or exc}"
    return str(exc)


def _unreachable(target: BrokerTarget, exc: BaseException, timeout_s: float, tls: bool) -> BrokerAnswer:
    fix = unreachable_fix(target.host)
    if isinstance(exc, ssl.SSLCertVerificationError):
        fix = (f"check that `ca` signs the broker's certificate and that the certificate names "
               f"{target.host!r} (the host the config connects to)")
    elif isinstance(exc, ssl.SSLError | ConnectionResetError):
        fix = ("TLS is configured: is this port the broker's TLS listener, and does it require a client "
               "certificate (tls cert/key)?" if tls
               else "TLS is not configured: is this port a TLS listener?")
    return BrokerAnswer(False, _os_reason(exc, target.host, timeout_s, tls), fix)


def tcp_reach(target: BrokerTarget, timeout_s: float = PROBE_TIMEOUT_S) -> BrokerAnswer:
    """Whether a TCP connection to the target opens within `timeout_s`."""
    try:
        with socket.create_connection((target.host, target.port), timeout=timeout_s):
            return BrokerAnswer(True, "accepts connections")
    except OSError as exc:
        return _unreachable(target, exc, timeout_s, tls=False)


def _refused(target: BrokerTarget, login: Login, reason: Any, who: str) -> BrokerAnswer:
    user = f"user {login.username!r}" if login.username is not None else "no username"
    fix = "check username and password_file, and whether the broker allows this user and client id"
    if "protocol version" in str(reason).lower():
        other = "3.1.1" if target.protocol == "5" else "5"
        fix = (f"the broker does not speak MQTT {target.protocol}: set protocol = \"{other}\" in [mqtt]"
               if target.upstream else "the broker does not speak MQTT 3.1.1, which sources use")
    return BrokerAnswer(False, f"refused the login: {reason} ({user}, {who})", fix)


def login_check(target: BrokerTarget, timeout_s: float = PROBE_TIMEOUT_S) -> BrokerAnswer:
    """Connect to the target as the agent would (its protocol, login and TLS) and read the CONNACK; only a
    TCP check when the target has no `login` or its password cannot be read here."""
    if target.login is None:
        return tcp_reach(target, timeout_s)
    try:
        login = target.login()
    except ConfigError as exc:
        reach = tcp_reach(target, timeout_s)
        if not reach.ok:
            return reach
        return BrokerAnswer(False, f"accepts connections; the login was not tried: {exc}",
                            "the agent reads the password at each connect: make the file readable by the "
                            "service user (a systemd credential is there only under the unit)")
    v5 = target.protocol == "5"
    client_id = target.probe_id
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                         protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
                         clean_session=None if v5 else True, reconnect_on_failure=False)
    end = time.monotonic() + timeout_s  # one budget for TCP, TLS and the CONNACK
    client.connect_timeout = timeout_s
    answers: list[mqtt.ReasonCode] = []
    client.on_connect = lambda _client, _userdata, _flags, reason, _properties: answers.append(reason)
    try:
        login.apply(client)
    except (OSError, ssl.SSLError, ValueError) as exc:  # a CA, certificate or key file paho cannot load
        return BrokerAnswer(False, f"the TLS files cannot be loaded: {exc}",
                            "check ca, cert and key in " + ("[mqtt.tls]" if target.upstream
                                                                  else "the source's tls table"))
    closed = False
    try:
        client.connect(target.host, target.port, keepalive=10)
        while not answers and time.monotonic() < end:
            if client.loop(timeout=0.1) != mqtt.MQTT_ERR_SUCCESS:
                closed = True  # the broker closed the connection before answering
                break
    except OSError as exc:  # ssl.SSLError is an OSError
        return _unreachable(target, exc, timeout_s, login.tls)
    finally:
        with contextlib.suppress(Exception):
            client.disconnect()
            client.loop(timeout=0.1)
    who = f"client id {client_id!r}" if client_id else "a broker-assigned client id"
    if not answers:
        why = ("closed the connection without answering the login" if closed
               else f"did not answer the login in {timeout_s:g} s")
        fix = ("the broker may require a client certificate (tls cert/key) or TLS on this port"
               if not login.tls else "the broker may require a client certificate (tls cert/key)")
        return BrokerAnswer(False, f"{why} ({who})", fix)
    reason = answers[0]
    if reason.is_failure:
        return _refused(target, login, reason, who)
    parts = [f"MQTT {target.protocol}", "TLS" if login.tls else "no TLS",
             f"user {login.username!r}" if login.username is not None else "no username"]
    return BrokerAnswer(True, f"accepts the agent's login ({', '.join(parts)})")
