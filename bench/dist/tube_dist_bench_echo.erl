%% The gen_server the distribution benchmark calls: answers `ping' with `pong'.
-module(tube_dist_bench_echo).
-behaviour(gen_server).

-export([init/1, handle_call/3, handle_cast/2]).

init([]) -> {ok, nostate}.

handle_call(ping, _From, S) -> {reply, pong, S}.

handle_cast(_Msg, S) -> {noreply, S}.
