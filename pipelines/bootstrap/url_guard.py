"""Which hosts and addresses the download stage may connect to.

Two tiers. Link-local and cloud metadata addresses are refused always: on a cloud VM the
metadata service hands out the instance's credentials to whoever can make it answer, so no
setting opens them. Loopback and private networks are refused unless `--allow-private-hosts`
(the toy world serves its images on loopback).

The check is on addresses, after resolution, and the download stage connects to exactly the
address checked here (pinned_http.py): a name whose DNS answer changes between a check and a
connect (DNS rebinding) gets no second answer.
"""

from __future__ import annotations

import ipaddress

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Names of the metadata services of the main clouds. They resolve to the addresses below inside
# the cloud; refusing the names too means a refusal does not depend on that resolution.
METADATA_NAMES = frozenset({
    "metadata.google.internal", "metadata.goog", "metadata",  # Google Cloud (and its short name)
    "instance-data", "instance-data.ec2.internal",  # AWS
    "metadata.azure.com", "metadata.azure.internal",  # Azure
    "metadata.tencentyun.com",  # Tencent Cloud
    "metadata.platformequinix.com",  # Equinix Metal
})

# Addresses that are always refused. 169.254.0.0/16 holds AWS/GCP/Azure/Oracle/DigitalOcean/
# OpenStack's 169.254.169.254 and Tencent's 169.254.0.23.
ALWAYS_BLOCKED_NETWORKS = tuple(ipaddress.ip_network(n) for n in (
    "169.254.0.0/16",  # IPv4 link-local
    "fe80::/10",  # IPv6 link-local
    "fd00:ec2::254/128",  # AWS metadata over IPv6
    "100.100.100.200/32",  # Alibaba Cloud metadata
    "192.0.0.192/32",  # Oracle Cloud's older metadata address
))


class HostRefused(Exception):
    """A host the download stage must not connect to; the message says which and why."""


def normal_host(host: str) -> str:
    """The name as DNS sees it: IDNA-encoded (fullwidth "ｍｅｔａｄａｔａ" is "metadata"), lower case,
    no trailing dot."""
    host = host.strip().rstrip(".")
    try:
        host = host.encode("idna").decode("ascii")
    except UnicodeError:
        pass  # not a valid IDNA name: resolving it fails too
    return host.lower()


def _unwrapped(addr: IPAddress) -> IPAddress:
    """The IPv4 address inside an IPv4-mapped or NAT64 IPv6 address, else `addr`: the same
    machine reached through another notation is the same machine."""
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return addr.ipv4_mapped
        if addr in ipaddress.ip_network("64:ff9b::/96"):
            return ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)
    return addr


def address_problem(addr: IPAddress, allow_private: bool) -> str | None:
    """Why a connection to `addr` is refused, or None."""
    addr = _unwrapped(addr)
    if any(addr in net for net in ALWAYS_BLOCKED_NETWORKS if net.version == addr.version):
        return f"link-local or cloud metadata address {addr} (refused always)"
    if allow_private:
        return None
    if (addr.is_loopback or addr.is_private or addr.is_multicast or addr.is_reserved or addr.is_unspecified
            or not addr.is_global):
        return f"non-public address {addr}"
    return None


def check_host_name(host: str) -> None:
    """Refuses a metadata service's name before it is resolved."""
    if normal_host(host) in METADATA_NAMES:
        raise HostRefused(f"host {host} is a cloud metadata service (refused always)")


def check_addresses(host: str, addresses: list[str], allow_private: bool) -> list[IPAddress]:
    """The addresses of `host`, parsed, if every one of them may be connected to; else HostRefused.
    All are checked, not only the first, so that which one a connect would pick does not matter."""
    parsed = []
    for text in addresses:
        addr = ipaddress.ip_address(text.split("%", 1)[0])  # drop an IPv6 zone ("fe80::1%eth0")
        problem = address_problem(addr, allow_private)
        if problem is not None:
            raise HostRefused(f"host {host} resolves to {problem}")
        parsed.append(addr)
    return parsed
