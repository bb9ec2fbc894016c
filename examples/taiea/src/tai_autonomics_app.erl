%%% The tai_autonomics application: configuration, supervision tree, signal handling, and the
%%% graceful stop (prep_stop/1: drain HTTP for up to 10 s, then the shutdown receipt).
-module(tai_autonomics_app).
-behaviour(application).

-include("tai.hrl").

-export([start/2, prep_stop/1, stop/1]).

-define(DRAIN_MS, 10000).

start(_Type, _Args) ->
    case tai_conf:load() of
        {ok, _Conf} ->
            case tai_autonomics_sup:start_link() of
                {ok, Pid} ->
                    tai_signal:install(),
                    {ok, Pid};
                {error, Reason} ->
                    fatal(start_failed, Reason, 1)
            end;
        {error, Reason} ->
            fatal(bad_config, Reason, 2)
    end.

prep_stop(State) ->
    Reason = application:get_env(tai_autonomics, stop_reason, stop),
    {Drain, Conns} = tai_http:drain(?DRAIN_MS),
    tai_log:emit_now([{kind, shutdown},
                      {reason, Reason},
                      {uptime_seconds, round(tai_conf:uptime_seconds() * 1000) / 1000},
                      {requests_processed, tai_conf:value(?C_REQUESTS)},
                      {memory_peak_mb, tai_metrics:memory_peak_mb()},
                      {drain, Drain},
                      {connections, Conns}]),
    State.

stop(_State) ->
    ok.

%% A start that cannot succeed: one error receipt, then exit (no crash dump, no boot noise).
fatal(Code, Reason, Status) ->
    tai_log:emit_now([{kind, error}, {component, tai_autonomics}, {error_code, Code},
                      {decision, refuse}, {reason, describe(Reason)}]),
    erlang:halt(Status, [{flush, true}]).

describe({unknown_fault, F}) ->
    iolist_to_binary(io_lib:format("unknown fault ~s (one of: ~s)",
                                   [F, lists:join(", ", [atom_to_list(X) || X <- ?FAULTS])]));
describe({bad_env, Var, Value}) ->
    <<"bad value for ", Var/binary, ": ", Value/binary>>;
describe({shutdown, {failed_to_start_child, tai_http, {listen_failed, Port, Why}}}) ->
    iolist_to_binary(io_lib:format("cannot listen on port ~b: ~s",
                                   [Port, inet:format_error(Why)]));
describe(Other) ->
    iolist_to_binary(io_lib:format("~0p", [Other])).
