# -*- test-case-name: tests.test_realip -*-
"""
The real client address of a request that came through proxies lbproxy
trusts (C{trusted_proxies}): nginx's C{set_real_ip_from} with
C{real_ip_recursive on}.

A request from a trusted peer names its client in C{X-Forwarded-For}:
each proxy appends the address it received the request from, so the
entries to the right are the closest.  The client is the rightmost entry
that is not itself a trusted proxy (all of them trusted: the leftmost);
a client that is not trusted cannot move it, whatever it writes in the
header, since only the entries that trusted proxies added are read.
"""

from __future__ import annotations

import ipaddress
from typing import Iterable, Optional, Sequence, Union

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.interfaces import IAddress

from lbproxy._values import (
    UNIX_PEERS,
    TrustedNetwork,
    parseTrustedProxy,
    spelledAddress,
)

_IP = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]

#: How many peer addresses L{TrustedProxies} remembers the answer for.
_CACHED_PEERS = 1024

#: How many C{X-Forwarded-For} entries L{TrustedProxies} remembers the
#: address of.
_CACHED_ENTRIES = 4096


def parseForwardedAddress(entry: bytes) -> Optional[tuple[_IP, int]]:
    """
    Parse one entry of C{X-Forwarded-For}: an IPv4 address with an
    optional port (C{192.0.2.1}, C{192.0.2.1:5000}), an IPv6 address, bare
    or in brackets with an optional port (C{2001:db8::1},
    C{[2001:db8::1]:5000}), as nginx accepts them.

    @return: the address and the port (0 when none is given), or L{None}
        when C{entry} is none of those (C{unknown}, a host name, an
        obfuscated identifier of RFC 7239).
    """
    try:
        text = entry.decode("ascii")
    except UnicodeDecodeError:
        return None
    port = "0"
    if text.startswith("["):
        text, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            return None
        port = rest[1:] or "0"
    elif text.count(":") == 1:
        text, _, port = text.partition(":")
    if not (port.isdigit() and len(port) <= 5 and int(port) < 65536):
        return None
    try:
        return ipaddress.ip_address(text), int(port)
    except ValueError:
        return None


def _unmapped(address: _IP) -> _IP:
    """
    An IPv4-mapped IPv6 address (C{::ffff:10.0.0.1}, what a dual-stack
    socket reports for an IPv4 peer) as the IPv4 address it is.
    """
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


class TrustedProxies:
    """
    The peers whose C{X-Forwarded-For} is believed, and how the client is
    found in it.

    @ivar networks: the IPv4 and IPv6 networks trusted.
    @ivar unix: whether peers on UNIX sockets are trusted.
    """

    def __init__(self, networks: Iterable[TrustedNetwork]) -> None:
        """
        @param networks: the networks: C{ipaddress} networks, or text as
            C{trusted_proxies} takes it (C{10.0.0.0/8}, C{::1}, C{unix:}).
        @raise ValueError: for text that is not a network.
        """
        parsed = [
            parseTrustedProxy(n) if isinstance(n, str) else n for n in networks
        ]
        self.unix = UNIX_PEERS in parsed
        self.networks: tuple[Union[ipaddress.IPv4Network, ipaddress.IPv6Network], ...] = (
            tuple(n for n in parsed if not isinstance(n, str))
        )
        self._peers: dict[str, bool] = {}
        self._entries: dict[bytes, Optional[tuple[IAddress, bool]]] = {}

    def __bool__(self) -> bool:
        return self.unix or bool(self.networks)

    def __repr__(self) -> str:
        names = [str(n) for n in self.networks] + ([UNIX_PEERS] if self.unix else [])
        return f"<TrustedProxies {' '.join(names)}>"

    def trustsAddress(self, address: _IP) -> bool:
        """
        Whether C{address} is in one of L{networks}.
        """
        address = _unmapped(address)
        return any(address in network for network in self.networks)

    def trustsPeer(self, peer: IAddress) -> bool:
        """
        Whether the peer C{peer} (a connection's address) is trusted; the
        answers for the first few hundred distinct addresses are
        remembered, since a site sees its proxies over and over.
        """
        if isinstance(peer, UNIXAddress):
            return self.unix
        if not isinstance(peer, (IPv4Address, IPv6Address)):
            return False
        host = peer.host
        known = self._peers.get(host)
        if known is None:
            try:
                known = self.trustsAddress(ipaddress.ip_address(host))
            except ValueError:
                known = False
            if len(self._peers) < _CACHED_PEERS:
                self._peers[host] = known
        return known

    def _entry(self, entry: bytes) -> Optional[tuple[IAddress, bool]]:
        """
        An entry of C{X-Forwarded-For} as the client address it names and
        whether that address is trusted, or L{None} when it is not an
        address.  The answers are remembered (a bounded number of them:
        the cache is emptied when full), since the same clients and
        proxies come back request after request, and parsing an address
        with L{ipaddress} costs several microseconds.
        """
        cache = self._entries
        try:
            return cache[entry]
        except KeyError:
            pass
        parsed = parseForwardedAddress(entry)
        answer: Optional[tuple[IAddress, bool]] = None
        if parsed is not None:
            address, port = parsed
            client: IAddress
            if isinstance(address, ipaddress.IPv4Address):
                client = IPv4Address("TCP", spelledAddress(address), port)
            else:
                client = IPv6Address("TCP", spelledAddress(address), port)
            answer = (client, self.trustsAddress(address))
        if len(cache) >= _CACHED_ENTRIES:
            cache.clear()
        cache[entry] = answer
        return answer

    def realClient(
        self, peer: IAddress, forwardedFor: Optional[Sequence[bytes]]
    ) -> Optional[tuple[IAddress, Optional[bytes]]]:
        """
        The client of a request from C{peer} that carries the
        C{X-Forwarded-For} values C{forwardedFor}.

        From a trusted peer, the entries are read from the right: the
        rightmost is the client, unless it is a trusted proxy too, then
        the one before it, and so on; an entry that is not an address
        stops the walk there (the last address read is the client, or the
        peer when the rightmost entry is not an address), as nginx does.

        @return: L{None} when the peer is the client (it is not trusted,
            or named no client); else the client's address (with the port
            given in its entry, or 0), and the C{X-Forwarded-For} value
            the request has once the client and the proxies after it are
            taken out (L{None} when nothing is left): the value of a
            request the client would have sent itself.
        """
        if not forwardedFor or not self.trustsPeer(peer):
            return None
        entries = [
            stripped
            for value in forwardedFor
            for entry in value.split(b",")
            for stripped in (entry.strip(b" \t"),)
            if stripped
        ]
        client: Optional[IAddress] = None
        index = len(entries)
        while index:
            answer = self._entry(entries[index - 1])
            if answer is None:
                break
            index -= 1
            client, trusted = answer
            if not trusted:
                break
        if client is None:
            return None
        rest = b", ".join(entries[:index]) if index else None
        return client, rest
