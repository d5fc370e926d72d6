%% The numbers the tube driver and the Erlang side share, generated from
%% native/tube_ring/src/proto.rs by native/tube_nif/build.rs: do not edit.
-define(TUBE_CTL_STATS, 1).
-define(TUBE_CTL_CLOSE, 2).
-define(TUBE_CTL_ACTIVE, 3).
-define(TUBE_CTL_BUSY_POLL, 4).
-define(TUBE_CTL_DIST, 5).
-define(TUBE_STATS_N, 13).
-define(TUBE_ACTIVE_NO_LIMIT, 0).
-define(TUBE_ACTIVE_SET, 1).
-define(TUBE_ACTIVE_ADD, 2).
-define(TUBE_ACTIVE_QUERY, 255).
-define(TUBE_DELIVERY_LOSSY, 0).
-define(TUBE_DELIVERY_RELIABLE, 1).
-define(TUBE_MAX_PACKET, 4096).
-define(TUBE_MAX_MESSAGE, 268435456).
-define(TUBE_MAX_DOMID, 32751).
-define(TUBE_MAX_TID, 4294967295).
-define(TUBE_DIST_TID_MIN, 4294901760).
-define(TUBE_DIST_TID_MAX, 4294967295).
-define(TUBE_DIST_RING_BYTES, 524288).
-define(TUBE_CLOSE_LINGER_MS, 5000).
-define(TUBE_MAX_BUSY_POLL, 100000).
%% The counters of TUBE_CTL_STATS, in order.
-define(TUBE_STATS, [sent, sent_bytes, received, received_bytes, dropped, rejected, wakeups, peer_os_pid, busy_poll, polling, busy, busy_us, queued_bytes]).
