%%% Replaces OTP's erl_signal_handler in erl_signal_server. On SIGTERM (the first one; more
%%% are ignored) the application is stopped: its prep_stop/1 drains HTTP (in-flight requests
%%% finish, up to 10 s) and prints the shutdown receipt; then the VM halts with status 0.
%%% (Stopping the application and halting, rather than init:stop/0, saves the ~1 s that
%%% init:stop/0 spends tearing down kernel and stdlib on OTP 25.) SIGUSR1 and SIGQUIT behave
%%% as in OTP.
-module(tai_signal).
-behaviour(gen_event).

-export([install/0]).
-export([init/1, handle_event/2, handle_call/2, handle_info/2]).

install() ->
    os:set_signal(sigterm, handle),
    case gen_event:swap_handler(erl_signal_server, {erl_signal_handler, []}, {?MODULE, []}) of
        ok -> ok;
        {error, _} -> gen_event:add_handler(erl_signal_server, ?MODULE, [])
    end.

init(_) ->
    {ok, #{stopping => false}}.

handle_event(sigterm, #{stopping := true} = S) ->
    {ok, S};
handle_event(sigterm, S) ->
    application:set_env(tai_autonomics, stop_reason, sigterm),
    spawn(fun() ->
                  _ = application:stop(tai_autonomics),
                  erlang:halt(0, [{flush, true}])
          end),
    {ok, S#{stopping => true}};
handle_event(sigusr1, S) ->
    erlang:halt("Received SIGUSR1"),
    {ok, S};
handle_event(sigquit, S) ->
    erlang:halt(),
    {ok, S};
handle_event(_, S) ->
    {ok, S}.

handle_call(_, S) ->
    {ok, ok, S}.

handle_info(_, S) ->
    {ok, S}.
