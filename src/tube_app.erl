%% @private
-module(tube_app).
-behaviour(application).

-export([start/2, stop/1]).
-export([init/1]).

%% The control plane may already run under the kernel, started at boot by
%% the distribution carrier (tube_dist:childspecs/0): then the application
%% supervises nothing of its own.
start(_Type, _Args) ->
    case whereis(tube_sup) of
        undefined ->
            case tube_nif:load_driver() of
                ok -> tube_sup:start_link();
                E -> E
            end;
        _ ->
            supervisor:start_link(?MODULE, none)
    end.

init(none) ->
    {ok, {#{}, []}}.

stop(_State) ->
    ok.
