%%% Readiness: started last, so every dependency is up when it runs. It flips the ready flag
%%% (at once, after 6 s with the slowstart fault, never with noready) and prints the startup
%%% receipt when it does.
-module(tai_ready).
-behaviour(gen_server).

-include("tai.hrl").

-export([start_link/0]).
-export([init/1, handle_call/3, handle_cast/2, handle_info/2]).

-define(SLOWSTART_MS, 6000).

start_link() ->
    gen_server:start_link({local, ?MODULE}, ?MODULE, [], []).

init([]) ->
    case tai_conf:get(fault) of
        noready -> ok;
        slowstart -> erlang:send_after(?SLOWSTART_MS, self(), ready);
        _ -> self() ! ready
    end,
    {ok, #{}}.

handle_call(_, _From, S) ->
    {reply, ok, S}.

handle_cast(_, S) ->
    {noreply, S}.

handle_info(ready, S) ->
    tai_conf:set(?C_READY, 1),
    #{env := Env, fault := Fault, vsn := Vsn, host := Host} = tai_conf:get(),
    tai_log:emit_now(
      [{kind, startup},
       {port, tai_http:port()},
       {host, list_to_binary(inet:ntoa(Host))},
       {startup_time_ms, round(tai_conf:elapsed_ms())},
       {memory_used_mb, round(erlang:memory(total) / 1048576 * 100) / 100},
       {rss_mb, tai_metrics:rss_mb()},
       {erlang_version, list_to_binary(erlang:system_info(otp_release))},
       {erts_version, list_to_binary(erlang:system_info(version))},
       {release, <<"tai_autonomics">>},
       {version, Vsn},
       {env, Env},
       {fault, Fault},
       {endpoints_ready, [<<"/health">>, <<"/ready">>, <<"/metrics">>, <<"/marketplace">>,
                          <<"/pubsub">>]}]),
    {noreply, S};
handle_info(_, S) ->
    {noreply, S}.
