%%% The running configuration: application env (sys.config, baked in at build time) overridden
%%% by the OS environment the start script passes on. Kept in persistent_term: read on every
%%% request, written once at start.
-module(tai_conf).

-include("tai.hrl").

-export([load/0, get/0, get/1, counters/0, incr/1, decr/1, value/1, set/2,
         uptime_seconds/0, elapsed_ms/0]).

-spec load() -> {ok, map()} | {error, term()}.
load() ->
    try
        Env = env_choice("TAIEA_ENV", [dev, prod], dev),
        Requested =
            case os:getenv("TAIEA_FAULT") of
                V when V =:= false; V =:= "" -> app_env(fault, none);
                V -> to_fault(V)
            end,
        is_fault(Requested) orelse throw({unknown_fault, Requested}),
        Fault = effective_fault(Requested, Env),
        Port = int_env("PORT", app_env(default_port, 8080), 0, 65535),
        CrashAfter = int_env("TAIEA_CRASH_AFTER", app_env(crash_after, 20), 1, 1 bsl 30),
        DelayMs = int_env("TAIEA_DELAY_MS", app_env(delay_ms, 20), 0, 60000),
        ErrorEvery = int_env("TAIEA_ERROR_EVERY", app_env(error_every, 20), 1, 1 bsl 30),
        Host = host(os:getenv("HTTP_HOST", app_env(default_host, "127.0.0.1"))),
        {ok, Vsn} = application:get_key(tai_autonomics, vsn),
        Conf = #{env => Env,
                 fault => Fault,
                 fault_requested => Requested,
                 port => Port,
                 host => Host,
                 crash_after => CrashAfter,
                 delay_ms => DelayMs,
                 error_every => ErrorEvery,
                 vsn => list_to_binary(Vsn),
                 counters => atomics:new(?C_SLOTS, [{signed, true}])},
        persistent_term:put(?MODULE, Conf),
        {ok, Conf}
    catch
        throw:Why -> {error, Why}
    end.

get() -> persistent_term:get(?MODULE).

get(Key) -> maps:get(Key, persistent_term:get(?MODULE)).

counters() -> maps:get(counters, persistent_term:get(?MODULE)).

incr(Slot) -> atomics:add_get(counters(), Slot, 1).

decr(Slot) -> atomics:sub(counters(), Slot, 1).

value(Slot) -> atomics:get(counters(), Slot).

set(Slot, V) -> atomics:put(counters(), Slot, V).

uptime_seconds() ->
    elapsed_ms() / 1000.

%% Milliseconds since the VM started.
elapsed_ms() ->
    Native = erlang:monotonic_time() - erlang:system_info(start_time),
    erlang:convert_time_unit(Native, native, microsecond) / 1000.

%%====================================================================

%% prod_errors / prod_slow / prod_delay misbehave only in production.
effective_fault(prod_errors, prod) -> errors;
effective_fault(prod_slow, prod) -> slow;
effective_fault(prod_delay, prod) -> delay;
effective_fault(F, _) when F =:= prod_errors; F =:= prod_slow; F =:= prod_delay -> none;
effective_fault(F, _) -> F.

is_fault(F) -> lists:member(F, ?FAULTS).

to_fault(S) ->
    case [F || F <- ?FAULTS, atom_to_list(F) =:= S] of
        [F] -> F;
        [] -> throw({unknown_fault, list_to_binary(S)})
    end.

app_env(Key, Default) ->
    application:get_env(tai_autonomics, Key, Default).

env_choice(Var, Choices, Default) ->
    case os:getenv(Var) of
        V when V =:= false; V =:= "" -> Default;
        V ->
            case [C || C <- Choices, atom_to_list(C) =:= V] of
                [C] -> C;
                [] -> throw({bad_env, list_to_binary(Var), list_to_binary(V)})
            end
    end.

int_env(Var, Default, Min, Max) ->
    case os:getenv(Var) of
        V when V =:= false; V =:= "" -> Default;
        V ->
            try list_to_integer(V) of
                N when N >= Min, N =< Max -> N;
                _ -> throw({bad_env, list_to_binary(Var), list_to_binary(V)})
            catch
                error:badarg -> throw({bad_env, list_to_binary(Var), list_to_binary(V)})
            end
    end.

host(Name) ->
    case inet:parse_address(Name) of
        {ok, Ip} -> Ip;
        {error, _} ->
            case inet:getaddr(Name, inet) of
                {ok, Ip} -> Ip;
                {error, _} -> throw({bad_env, <<"HTTP_HOST">>, list_to_binary(Name)})
            end
    end.
