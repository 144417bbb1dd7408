/*
 * See net6.h.  The address is added with IFA_F_NODAD: duplicate address
 * detection would leave it "tentative" (unusable) for about a second after
 * the guest is up, while summoner answers the AAAA as soon as the guest's
 * HTTP server answers; the address is the zone's, so the operator owns its
 * uniqueness, as with the IPv4 address from ip=.
 *
 * musl ships no <linux/...> headers, so the few rtnetlink structures used
 * here are declared locally (the kernel's stable ABI, include/uapi).
 */
#define _GNU_SOURCE
#include "net6.h"

#include <arpa/inet.h>
#include <errno.h>
#include <net/if.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define GUEST_IF "eth0"

struct nl_header { uint32_t len; uint16_t type, flags; uint32_t seq, pid; };
struct nl_error { int32_t error; struct nl_header request; };
struct nl_address { uint16_t family, pad; uint32_t pid, groups; };
struct if_address { uint8_t family, prefix_len, flags, scope; uint32_t index; };
struct route { uint8_t family, dst_len, src_len, tos, table, protocol, scope, type; uint32_t flags; };
struct attr { uint16_t len, type; };

enum {
    RTM_NEWADDR = 20, RTM_NEWROUTE = 24, NLMSG_ERROR = 2,
    F_REQUEST = 1, F_ACK = 4, F_REPLACE = 0x100, F_CREATE = 0x400,
    IFA_ADDRESS = 1, IFA_F_NODAD = 0x02,
    RTA_OIF = 4, RTA_GATEWAY = 5, RT_TABLE_MAIN = 254, RTPROT_BOOT = 3, RTN_UNICAST = 1,
};

struct request {
    struct nl_header header;
    union { struct if_address address; struct route route; } body;
    unsigned char attrs[64];
};

static size_t align4(size_t n) { return (n + 3) & ~(size_t)3; }

static void add_attr(struct request *req, uint16_t type, const void *data, uint16_t size)
{
    struct attr *a = (struct attr *)((unsigned char *)req + align4(req->header.len));
    a->len = (uint16_t)(sizeof *a + size);
    a->type = type;
    memcpy(a + 1, data, size);
    req->header.len = (uint32_t)(align4(req->header.len) + align4(a->len));
}

/* Send one request, wait for its acknowledgement: 0, or a negative errno. */
static int talk(struct request *req)
{
    int fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, 0 /* NETLINK_ROUTE */);
    if (fd < 0)
        return -errno;
    struct nl_address kernel = {.family = AF_NETLINK};
    req->header.flags = F_REQUEST | F_ACK | F_CREATE | F_REPLACE;
    req->header.seq = 1;
    int result = -EPROTO;
    if (sendto(fd, req, req->header.len, 0, (struct sockaddr *)&kernel, sizeof kernel) < 0) {
        result = -errno;
    } else {
        union { struct nl_header header; unsigned char bytes[512]; } reply;
        ssize_t n = recv(fd, &reply, sizeof reply, 0);
        if (n < 0)
            result = -errno;
        else if ((size_t)n >= sizeof reply.header + sizeof(struct nl_error) && reply.header.type == NLMSG_ERROR)
            result = ((struct nl_error *)(reply.bytes + sizeof reply.header))->error;
    }
    close(fd);
    return result;
}

static int add_address(unsigned index, const struct in6_addr *address, unsigned prefix_len)
{
    struct request req = {.header = {.len = sizeof req.header + sizeof req.body.address, .type = RTM_NEWADDR}};
    req.body.address = (struct if_address){.family = AF_INET6, .prefix_len = (uint8_t)prefix_len,
                                           .flags = IFA_F_NODAD, .index = index};
    add_attr(&req, IFA_ADDRESS, address, sizeof *address);
    return talk(&req);
}

static int add_default_route(unsigned index, const struct in6_addr *gateway)
{
    struct request req = {.header = {.len = sizeof req.header + sizeof req.body.route, .type = RTM_NEWROUTE}};
    req.body.route = (struct route){.family = AF_INET6, .table = RT_TABLE_MAIN, .protocol = RTPROT_BOOT,
                                    .type = RTN_UNICAST};
    uint32_t oif = index;
    add_attr(&req, RTA_GATEWAY, gateway, sizeof *gateway);
    add_attr(&req, RTA_OIF, &oif, sizeof oif);
    return talk(&req);
}

int net6_configure(char *why, unsigned long why_size)
{
    const char *spec = getenv("summoner_ip6");
    if (!spec)
        return 0;
    char text[INET6_ADDRSTRLEN + 8];
    snprintf(text, sizeof text, "%s", spec);
    char *slash = strchr(text, '/');
    unsigned prefix_len = slash ? (unsigned)strtoul(slash + 1, NULL, 10) : 64;
    if (slash)
        *slash = '\0';
    struct in6_addr address, gateway;
    if (inet_pton(AF_INET6, text, &address) != 1 || prefix_len == 0 || prefix_len > 128) {
        snprintf(why, why_size, "summoner_ip6=%s is not ADDRESS/PREFIX", spec);
        return -1;
    }
    unsigned index = if_nametoindex(GUEST_IF);
    if (index == 0) {
        snprintf(why, why_size, "no interface %s: %s", GUEST_IF, strerror(errno));
        return -1;
    }
    int err = add_address(index, &address, prefix_len);
    if (err < 0) {
        snprintf(why, why_size, "adding %s to %s: %s", spec, GUEST_IF, strerror(-err));
        return -1;
    }
    const char *gw = getenv("summoner_ip6gw");
    if (gw && *gw) {
        if (inet_pton(AF_INET6, gw, &gateway) != 1) {
            snprintf(why, why_size, "summoner_ip6gw=%s is not an IPv6 address", gw);
            return -1;
        }
        err = add_default_route(index, &gateway);
        if (err < 0) {
            snprintf(why, why_size, "default route via %s: %s", gw, strerror(-err));
            return -1;
        }
    }
    return 0;
}
