%% @private
-module(tube_app).
-behaviour(application).

-export([start/2, stop/1]).

%% The control plane may already run, started at boot by the distribution
%% carrier (tube_dist:childspecs/0): then it is not started twice.
start(_Type, _Args) ->
    case tube_nif:load_driver() of
        ok ->
            case whereis(tube_sup) of
                undefined -> tube_sup:start_link();
                _ -> tube_sup:start_link(empty)
            end;
        E ->
            E
    end.

stop(_State) ->
    ok.
