/*
 * tube_drv.c: the erl_driver glue of the tube port driver.
 *
 * The driver's logic (ring engine, draining, counters) lives in Rust
 * (native/tube_nif/src/driver.rs). This file only holds what is easiest to
 * get right against the real erl_driver.h: the ErlDrvEntry table, thin
 * callbacks that forward to Rust, and helpers that call erl_driver
 * functions whose arguments are macros or term-building arrays.
 *
 * The entry is handed to the emulator by `driver_init`, which is defined in
 * Rust: a Rust cdylib does not export the C symbols of a static library it
 * links, so Rust exports the symbol and returns tube_drv_entry().
 */
#include <stdint.h>
#include <string.h>
#include <erl_driver.h>

/* Implemented in Rust (driver.rs). `st` is the opaque state start returned. */
extern void *tube_rs_start(ErlDrvPort port, const char *command);
extern void tube_rs_stop(void *st);
extern void tube_rs_outputv(void *st, const SysIOVec *iov, int n);
extern int tube_rs_set_dist(void *st);
extern void tube_rs_ready_input(void *st);
extern void tube_rs_timeout(void *st);
extern int tube_rs_stats(void *st, uint64_t *out, size_t n);
extern int tube_rs_request_close(void *st, const char *reason, size_t len);
extern int tube_rs_set_active(void *st, const char *buf, size_t len);
extern int tube_rs_get_active(void *st, unsigned char *out, size_t n);
extern int tube_rs_set_busy_poll(void *st, const char *buf, size_t len);
extern void tube_rs_stop_select(intptr_t fd);
extern int tube_rs_set_deliver(void *st, const char *buf, size_t len);
extern int tube_rs_send_batch(void *st, const char *buf, size_t len, unsigned char *out, size_t n);
extern int tube_rs_call_send_batch(void *st, const char *buf, size_t len, unsigned char *out, size_t n);
extern int tube_rs_rx_look(void *st, const char *buf, size_t len, uint64_t *out);
extern int tube_rs_rx_count(void *st, uint64_t *out);

/* TUBE_STATS_N (u64 counters of a stats control), the port_control
 * command numbers TUBE_CTL_* and TUBE_ACTIVE_QUERY (the one data byte of an
 * active control that asks for the mode): generated from native/tube_ring/src/proto.rs. */
#include "tube_proto.h"

/* ---- helpers called from Rust ---------------------------------------- */

/* Start (or stop) waiting for readability of the tube's event fd.
 * ERL_DRV_USE makes the emulator call stop_select when the fd can be closed. */
int tube_drv_select(ErlDrvPort port, intptr_t fd, int on)
{
    ErlDrvEvent ev = (ErlDrvEvent)fd;
    if (on)
        return driver_select(port, ev, ERL_DRV_READ | ERL_DRV_USE, 1);
    return driver_select(port, ev, ERL_DRV_READ | ERL_DRV_USE, 0);
}

/* One received packet to the port owner as {Port, {data, Binary}}
 * (the port is opened in binary mode). */
int tube_drv_deliver(ErlDrvPort port, const char *buf, size_t len)
{
    return driver_output(port, (char *)buf, (ErlDrvSizeT)len);
}

/* A driver binary of len bytes for the ring to copy a packet into; its
 * bytes are returned in *data. NULL when out of memory. */
ErlDrvBinary *tube_drv_alloc_binary(size_t len, char **data)
{
    ErlDrvBinary *bin = driver_alloc_binary((ErlDrvSizeT)len);
    if (bin != NULL)
        *data = bin->orig_bytes;
    return bin;
}

/* Delivers bytes offs..offs+len of a filled binary as {Port, {data,
 * Binary}} without copying them, then drops the driver's reference (the
 * message keeps its own). */
int tube_drv_deliver_binary_at(ErlDrvPort port, ErlDrvBinary *bin, size_t offs, size_t len)
{
    int r = driver_output_binary(port, NULL, 0, bin, (ErlDrvSizeT)offs, (ErlDrvSizeT)len);
    driver_free_binary(bin);
    return r;
}

/* The first len bytes of a filled binary, as tube_drv_deliver_binary_at. */
int tube_drv_deliver_binary(ErlDrvPort port, ErlDrvBinary *bin, size_t len)
{
    return tube_drv_deliver_binary_at(port, bin, 0, len);
}

/* Resizes a binary only the driver holds, keeping its bytes; its (possibly
 * moved) bytes are returned in *data. NULL when out of memory, and the old
 * binary is then still valid. */
ErlDrvBinary *tube_drv_realloc_binary(ErlDrvBinary *bin, size_t len, char **data)
{
    ErlDrvBinary *grown = driver_realloc_binary(bin, (ErlDrvSizeT)len);
    if (grown != NULL)
        *data = grown->orig_bytes;
    return grown;
}

/* Drops the driver's reference to a binary that was never delivered. */
void tube_drv_free_binary(ErlDrvBinary *bin)
{
    driver_free_binary(bin);
}

/* A reliable tube whose peer's ring is full: busy makes port_command
 * suspend its callers (and the emulator hold a distribution queue). */
void tube_drv_set_busy(ErlDrvPort port, int on)
{
    set_busy_port(port, on);
}

/* Fails a distribution port without a message to its owner: the emulator
 * takes the connection down. */
int tube_drv_fail(ErlDrvPort port)
{
    return driver_failure_eof(port);
}

/* Ask for a timeout callback as soon as possible: used to go on draining a
 * busy ring without holding the scheduler for one long callback. */
int tube_drv_resume_later(ErlDrvPort port)
{
    return driver_set_timer(port, 0);
}

/* Comes back through timeout after ms milliseconds (a reliable tube
 * waiting, after a requested close, for its peer's last messages). */
int tube_drv_consume_timeslice(ErlDrvPort port, int percent)
{
    return erl_drv_consume_timeslice(port, percent);
}

int tube_drv_set_timer(ErlDrvPort port, unsigned long ms)
{
    return driver_set_timer(port, ms);
}

/* The owner's credit ran out ({active, N}): {tube_passive, Port}. */
int tube_drv_passive(ErlDrvPort port)
{
    ErlDrvTermData port_term = driver_mk_port(port);
    ErlDrvTermData spec[] = {
        ERL_DRV_ATOM, driver_mk_atom("tube_passive"),
        ERL_DRV_PORT, port_term,
        ERL_DRV_TUPLE, 2,
    };
    return erl_drv_output_term(port_term, spec, sizeof(spec) / sizeof(spec[0]));
}

/* The process making the port_control call under way (the receive
 * governor, for a bounded tube's grant). */
ErlDrvTermData tube_drv_caller(ErlDrvPort port)
{
    return driver_caller(port);
}

/* A bounded tube has used half its window: {tube_rx_low, Port, Owner} to
 * the receive governor `to`. */
int tube_drv_rx_low(ErlDrvPort port, ErlDrvTermData to)
{
    ErlDrvTermData port_term = driver_mk_port(port);
    ErlDrvTermData spec[] = {
        ERL_DRV_ATOM, driver_mk_atom("tube_rx_low"),
        ERL_DRV_PORT, port_term,
        ERL_DRV_PID, driver_connected(port),
        ERL_DRV_TUPLE, 3,
    };
    return erl_drv_send_term(port_term, to, spec, sizeof(spec) / sizeof(spec[0]));
}

/* Tell the owner why the tube is going away, then close the port:
 * {tube_closed, Port, Reason} where Reason is an atom. */
int tube_drv_close(ErlDrvPort port, const char *reason)
{
    ErlDrvTermData port_term = driver_mk_port(port);
    ErlDrvTermData spec[] = {
        ERL_DRV_ATOM, driver_mk_atom("tube_closed"),
        ERL_DRV_PORT, port_term,
        ERL_DRV_ATOM, driver_mk_atom((char *)reason),
        ERL_DRV_TUPLE, 3,
    };
    erl_drv_output_term(port_term, spec, sizeof(spec) / sizeof(spec[0]));
    return driver_failure_eof(port);
}

/* ---- batch delivery ({deliver, batch}) ------------------------------------ */

/* Packets up to this size become heap binaries (copied, as driver_output does
 * for them); larger ones are sub-binaries of the batch's driver binary. */
#define TUBE_BATCH_HEAP_BIN 64

/* The atom data_batch, made once: atoms live as long as the emulator. */
static ErlDrvTermData tube_am_data_batch(void)
{
    static ErlDrvTermData am;
    ErlDrvTermData a = __atomic_load_n(&am, __ATOMIC_RELAXED);
    if (a == 0) {
        a = driver_mk_atom("data_batch");
        __atomic_store_n(&am, a, __ATOMIC_RELAXED);
    }
    return a;
}

/* One batch to the port owner as {Port, {data_batch, [Bin1, ..., BinN]}}:
 * packet i is the bytes [offs[i], offs[i] + lens[i]) of `bin`, `used` bytes
 * of which are filled. `spec` has room for 4 * n + 12 terms. A batch that
 * fills less than half of `bin` shrinks it first, so the sub-binaries that
 * keep it alive hold at most twice what they show.
 * Returns 1 if the message references `bin` (then the caller must not
 * reuse it), 0 if every packet was copied (the caller may fill it again),
 * and in both cases the caller still holds its own reference. -1: no
 * message was sent. */
int tube_drv_deliver_batch(ErlDrvPort port, ErlDrvBinary **binp, size_t used,
                           const uint32_t *offs, const uint32_t *lens, size_t n,
                           ErlDrvTermData *spec)
{
    ErlDrvBinary *bin = *binp;
    ErlDrvTermData port_term = driver_mk_port(port);
    size_t i, k = 0;
    int shared = 0;
    for (i = 0; i < n; i++)
        shared |= lens[i] > TUBE_BATCH_HEAP_BIN;
    if (shared && used < (size_t)bin->orig_size / 2) {
        ErlDrvBinary *smaller = driver_realloc_binary(bin, (ErlDrvSizeT)used);
        if (smaller != NULL)
            *binp = bin = smaller;
    }
    spec[k++] = ERL_DRV_PORT;
    spec[k++] = port_term;
    spec[k++] = ERL_DRV_ATOM;
    spec[k++] = tube_am_data_batch();
    for (i = 0; i < n; i++) {
        if (lens[i] <= TUBE_BATCH_HEAP_BIN) {
            spec[k++] = ERL_DRV_BUF2BINARY;
            spec[k++] = (ErlDrvTermData)(bin->orig_bytes + offs[i]);
            spec[k++] = (ErlDrvTermData)lens[i];
        } else {
            spec[k++] = ERL_DRV_BINARY;
            spec[k++] = (ErlDrvTermData)bin;
            spec[k++] = (ErlDrvTermData)lens[i];
            spec[k++] = (ErlDrvTermData)offs[i];
        }
    }
    spec[k++] = ERL_DRV_NIL;
    spec[k++] = ERL_DRV_LIST;
    spec[k++] = (ErlDrvTermData)(n + 1);
    spec[k++] = ERL_DRV_TUPLE;
    spec[k++] = 2;
    spec[k++] = ERL_DRV_TUPLE;
    spec[k++] = 2;
    if (erl_drv_output_term(port_term, spec, (int)k) <= 0)
        return -1;
    return shared;
}

/* ---- callbacks ---------------------------------------------------------- */

static ErlDrvData tube_start(ErlDrvPort port, char *command)
{
    void *st = tube_rs_start(port, command);
    if (st == NULL)
        return ERL_DRV_ERROR_BADARG;
    return (ErlDrvData)st;
}

static void tube_stop(ErlDrvData d)
{
    tube_rs_stop((void *)d);
}

/* port_command/2, Port ! {Pid, {command, Data}}, and the emulator's
 * distribution output: the whole iodata is one packet or message (Rust
 * decides, by the tube's delivery mode). */
static void tube_outputv(ErlDrvData d, ErlIOVec *ev)
{
    tube_rs_outputv((void *)d, ev->iov, ev->vsize);
}

static void tube_ready_input(ErlDrvData d, ErlDrvEvent ev)
{
    (void)ev;
    tube_rs_ready_input((void *)d);
}

static void tube_timeout(ErlDrvData d)
{
    tube_rs_timeout((void *)d);
}

/* A port_control answer of n bytes: into the emulator's buffer when it is
 * large enough, else into one the emulator frees after the call. */
static ErlDrvSSizeT control_reply(const void *data, size_t n, char **rbuf, ErlDrvSizeT rlen)
{
    if (rlen < n) {
        char *out = driver_alloc(n);
        if (out == NULL)
            return -1;
        *rbuf = out;
    }
    memcpy(*rbuf, data, n);
    return (ErlDrvSSizeT)n;
}

/* port_control(Tube, 1, []) -> TUBE_STATS_N native-endian u64 counters as a list of
 * bytes; see tube_rs_stats for their order.
 * port_control(Tube, 2, Reason) -> [] and the tube closes soon after with
 * {tube_closed, Tube, Reason}; Reason is peer_closed or peer_down.
 * port_control(Tube, 3, <<Mode:8, N:64/native>>) -> [] sets {active, _};
 * port_control(Tube, 3, <<255>>) -> <<Mode:8, N:64/native>>, the mode now.
 * port_control(Tube, 4, <<Us:32/native>>) -> [] sets {busy_poll, Us}.
 * port_control(Tube, 5, []) -> [] makes a reliable tube a distribution
 * controller (badarg for a lossy one).
 * port_control(Tube, 6, <<Mode:8>>) -> [] sets {deliver, _} (0 packet, 1 batch).
 * port_control(Tube, 7, Framed) -> <<Status:8, Sent:32/native>> sends a batch
 * of packets framed <<Len:16, Bytes/binary>> (see send_batch in src/tube.erl).
 * port_control(Tube, 8, []) -> <<Count:64/native>>, packets delivered so
 * far; port_control(Tube, 8, <<Count:64/native, Queue:64/native>>) ->
 * <<WaitUs:64/native>> is the receive governor's look at
 * a bounded tube's owner (see rx_bound.rs); [] from a tube in another mode.
 * Unknown commands and reasons: badarg. */
static ErlDrvSSizeT tube_control(ErlDrvData d, unsigned int command, char *buf,
                                 ErlDrvSizeT len, char **rbuf, ErlDrvSizeT rlen)
{
    uint64_t stats[TUBE_STATS_N];
    if (command == TUBE_CTL_CLOSE)
        return tube_rs_request_close((void *)d, buf, (size_t)len) == 0 ? 0 : -1;
    if (command == TUBE_CTL_ACTIVE && len == 1 && (unsigned char)buf[0] == TUBE_ACTIVE_QUERY) {
        unsigned char mode[9];
        if (tube_rs_get_active((void *)d, mode, sizeof(mode)) != 0)
            return -1;
        return control_reply(mode, sizeof(mode), rbuf, rlen);
    }
    if (command == TUBE_CTL_ACTIVE)
        return tube_rs_set_active((void *)d, buf, (size_t)len) == 0 ? 0 : -1;
    if (command == TUBE_CTL_BUSY_POLL)
        return tube_rs_set_busy_poll((void *)d, buf, (size_t)len) == 0 ? 0 : -1;
    if (command == TUBE_CTL_DIST)
        return tube_rs_set_dist((void *)d) == 0 ? 0 : -1;
    if (command == TUBE_CTL_DELIVER)
        return tube_rs_set_deliver((void *)d, buf, (size_t)len) == 0 ? 0 : -1;
    if (command == TUBE_CTL_SEND_BATCH) {
        unsigned char answer[5];
        if (tube_rs_send_batch((void *)d, buf, (size_t)len, answer, sizeof(answer)) != 0)
            return -1;
        return control_reply(answer, sizeof(answer), rbuf, rlen);
    }
    if (command == TUBE_CTL_RX_GRANT && len == 0) {
        uint64_t count;
        if (tube_rs_rx_count((void *)d, &count) != 0)
            return -1;
        return control_reply(&count, sizeof(count), rbuf, rlen);
    }
    if (command == TUBE_CTL_RX_GRANT) {
        uint64_t answer;
        int r = tube_rs_rx_look((void *)d, buf, (size_t)len, &answer);
        if (r < 0)
            return -1;
        if (r > 0)
            return 0;
        return control_reply(&answer, sizeof(answer), rbuf, rlen);
    }
    if (command != TUBE_CTL_STATS)
        return -1;
    if (tube_rs_stats((void *)d, stats, TUBE_STATS_N) != 0)
        return -1;
    return control_reply(stats, sizeof(stats), rbuf, rlen);
}

/* erlang:port_call(Tube, 1, [Binary]) -> Sent | closed | framed: send_batch/2
 * of a list of binaries, which arrives in the external term format (see
 * tube_rs_call_send_batch); the answer is in that format too. Unknown
 * commands: badarg. */
static ErlDrvSSizeT tube_call(ErlDrvData d, unsigned int command, char *buf, ErlDrvSizeT len,
                              char **rbuf, ErlDrvSizeT rlen, unsigned int *flags)
{
    unsigned char answer[16];
    int n;
    (void)flags;
    if (command != TUBE_CALL_SEND_BATCH)
        return -1;
    n = tube_rs_call_send_batch((void *)d, buf, (size_t)len, answer, sizeof(answer));
    if (n <= 0)
        return -1;
    return control_reply(answer, (size_t)n, rbuf, rlen);
}

static void tube_stop_select(ErlDrvEvent ev, void *reserved)
{
    (void)reserved;
    tube_rs_stop_select((intptr_t)ev);
}

static ErlDrvEntry tube_entry = {
    NULL,                          /* init: nothing global to set up */
    tube_start,                    /* start: open_port({spawn_driver, "tube_nif Id"}) */
    tube_stop,                     /* stop: port closed, owner died, or failure */
    NULL,                          /* output: outputv is used instead */
    tube_ready_input,              /* ready_input: event fd readable (wakeup or hang-up) */
    NULL,                          /* ready_output: never selected for writing */
    "tube_nif",                    /* driver_name: must equal the .so file name */
    NULL,                          /* finish: nothing global to tear down */
    NULL,                          /* handle: reserved for the emulator */
    tube_control,                  /* control: counters, close, {active, _}, {busy_poll, _}, dist */
    tube_timeout,                  /* timeout: go on draining a busy ring */
    tube_outputv,                  /* outputv: one packet or message per command */
    NULL,                          /* ready_async: no async jobs */
    NULL,                          /* flush: nothing is queued in the driver */
    tube_call,                     /* call: send_batch/2 of a list of binaries */
    NULL,                          /* unused_event_callback */
    ERL_DRV_EXTENDED_MARKER,       /* extended_marker */
    ERL_DRV_EXTENDED_MAJOR_VERSION,/* major_version */
    ERL_DRV_EXTENDED_MINOR_VERSION,/* minor_version */
    /* driver_flags: ports run in parallel; SOFT_BUSY lets the emulator (a
     * distribution port) and port_command(_, _, [force]) call outputv while
     * the port is busy, which erlang:setnode/3 requires. */
    ERL_DRV_FLAG_USE_PORT_LOCKING | ERL_DRV_FLAG_SOFT_BUSY,
    NULL,                          /* handle2: reserved for the emulator */
    NULL,                          /* process_exit: no monitors */
    tube_stop_select,              /* stop_select: release the event fd */
    NULL,                          /* emergency_close: nothing to flush */
};

ErlDrvEntry *tube_drv_entry(void)
{
    return &tube_entry;
}
