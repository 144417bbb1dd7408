/*
 * IPv6 address configuration for summoner guests (bridge mode).
 *
 * The kernel's ip= parameter configures IPv4 only.  For a host with an AAAA
 * record, summoner passes the address on the kernel command line as
 * summoner_ip6=ADDR/PREFIX (and summoner_ip6gw=ADDR for a default route);
 * the kernel hands unknown name=value parameters to init as environment
 * variables, and net6_configure() applies them over rtnetlink.
 */
#ifndef NET6_H
#define NET6_H

/* 0: nothing asked, or configured; -1: failed, with a reason in why. */
int net6_configure(char *why, unsigned long why_size);

#endif
