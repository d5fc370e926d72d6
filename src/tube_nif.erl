%% @private
%% Native stubs of tube: the NIF library and the port driver live in the
%% same shared library, priv/tube_nif.so. Every function here is replaced
%% when the library loads; the bodies only run if it did not.
-module(tube_nif).

-export([load_driver/0, lib_dir/0]).
-export([xs_open/2, xs_send/3, xs_close/1, xs_default_path/0]).
-export([ring_offer/0, ring_offer/1, ring_accept/2, ring_connect/4, ring_connect/5,
         ring_connect_start/3, ring_connect_start/4,
         ring_connect_finish/2, ring_handoff/1,
         ring_discard/1, ring_parked/0]).
-export([rx_clock/2]).

-on_load(init/0).

-define(LIB, "tube_nif").

init() ->
    erlang:load_nif(filename:join(lib_dir(), ?LIB), 0).

%% The directory holding tube_nif.so and tubestored.
lib_dir() ->
    case code:priv_dir(tube) of
        {error, bad_name} ->
            filename:join([filename:dirname(code:which(?MODULE)), "..", "priv"]);
        Dir ->
            Dir
    end.

%% Loads the same file as the port driver `tube_nif` (idempotent).
load_driver() ->
    case erl_ddll:load_driver(lib_dir(), ?LIB) of
        ok -> ok;
        {error, already_loaded} -> ok;
        {error, Reason} -> {error, {load_driver, erl_ddll:format_error(Reason)}}
    end.

xs_open(_Path, _Tag) -> nif_error().
xs_send(_Conn, _Requests, _Ref) -> nif_error().
xs_close(_Conn) -> nif_error().
xs_default_path() -> nif_error().

ring_offer() -> nif_error().
%% As ring_offer/0, with the ring size of the tube's Tid (larger for distribution Tids).
ring_offer(_Tid) -> nif_error().
ring_accept(_Offer, _TimeoutMs) -> nif_error().
ring_connect(_Evtchn, _TxRef, _RxRef, _TimeoutMs) -> nif_error().
%% As ring_connect/4 and ring_connect_start/3, expecting the ring size of the tube's Tid.
ring_connect(_Evtchn, _TxRef, _RxRef, _Tid, _TimeoutMs) -> nif_error().
ring_connect_start(_Evtchn, _TxRef, _RxRef) -> nif_error().
ring_connect_start(_Evtchn, _TxRef, _RxRef, _Tid) -> nif_error().
ring_connect_finish(_Connecting, _TimeoutMs) -> nif_error().
ring_handoff(_Tube) -> nif_error().
ring_discard(_Id) -> nif_error().
ring_parked() -> nif_error().

%% Sends `tube_rx_clock' to Pid in Us microseconds, replacing the deadline
%% set before (the receive governor's clock, see native/tube_nif/src/rx_clock.rs).
rx_clock(_Pid, _Us) -> nif_error().

nif_error() -> erlang:nif_error({not_loaded, ?LIB}).
