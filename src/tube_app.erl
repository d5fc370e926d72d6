%% @private
-module(tube_app).
-behaviour(application).

-export([start/2, stop/1]).

start(_Type, _Args) ->
    case tube_nif:load_driver() of
        ok -> tube_sup:start_link();
        E -> E
    end.

stop(_State) ->
    ok.
