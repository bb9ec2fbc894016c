%%% Request counters (endpoint, method, status) in ETS, a memory-peak sampler, and the
%%% Prometheus text exposition (format 0.0.4) served on GET /metrics.
-module(tai_metrics).
-behaviour(gen_server).

-include("tai.hrl").

-export([start_link/0, count/3, count_decision/1, render/0, memory_peak_mb/0, rss_mb/0]).
-export([init/1, handle_call/3, handle_cast/2, handle_info/2]).

-define(TAB, tai_metrics_counters).
-define(SAMPLE_MS, 1000).
-define(KNOWN, [<<"/health">>, <<"/ready">>, <<"/metrics">>, <<"/marketplace">>, <<"/pubsub">>,
                <<"/slow">>]).

start_link() ->
    gen_server:start_link({local, ?MODULE}, ?MODULE, [], []).

count(Endpoint, Method, Status) ->
    Label = case lists:member(Endpoint, ?KNOWN) of
                true -> Endpoint;
                false -> <<"other">>
            end,
    Key = {http, Label, Method, Status},
    ets:update_counter(?TAB, Key, 1, {Key, 0}).

count_decision(Decision) ->
    Key = {decision, Decision},
    ets:update_counter(?TAB, Key, 1, {Key, 0}).

%% The highest resident set size of the VM (VmHWM), or the highest sampled erlang:memory(total).
memory_peak_mb() ->
    Sampled = case ets:lookup(?TAB, peak_bytes) of
                  [{_, B}] -> B;
                  [] -> erlang:memory(total)
              end,
    Hwm = case proc_status(<<"VmHWM:">>) of
              undefined -> 0;
              Kb -> Kb * 1024
          end,
    mb(lists:max([Sampled, Hwm, current_bytes()])).

%% Resident set size when the OS tells it, else what the VM allocated.
current_bytes() ->
    case proc_status(<<"VmRSS:">>) of
        undefined -> erlang:memory(total);
        Kb -> max(Kb * 1024, erlang:memory(total))
    end.

rss_mb() ->
    case proc_status(<<"VmRSS:">>) of
        undefined -> mb(erlang:memory(total));
        Kb -> mb(Kb * 1024)
    end.

mb(Bytes) -> round(Bytes / 1048576 * 100) / 100.

proc_status(Field) ->
    case file:read_file("/proc/self/status") of
        {ok, Bin} ->
            case binary:split(Bin, Field) of
                [_, After] ->
                    [Line | _] = binary:split(After, <<"\n">>),
                    [Num | _] = string:lexemes(Line, " \t"),
                    binary_to_integer(Num);
                _ -> undefined
            end;
        _ -> undefined
    end.

render() ->
    Mem = erlang:memory(),
    Http = lists:sort([{E, M, S, N} || {{http, E, M, S}, N} <- ets:tab2list(?TAB)]),
    Decisions = lists:sort([{D, N} || {{decision, D}, N} <- ets:tab2list(?TAB)]),
    States = tai_governor:state_counts(),
    #{fault := Fault, env := Env, vsn := Vsn} = tai_conf:get(),
    [help(<<"taiea_info">>, gauge, <<"Release version, environment and active fault.">>),
     [<<"taiea_info{version=\"">>, Vsn, <<"\",env=\"">>, atom_to_binary(Env),
      <<"\",fault=\"">>, atom_to_binary(Fault), <<"\"} 1\n">>],
     help(<<"taiea_ready">>, gauge, <<"1 when the application is ready.">>),
     [<<"taiea_ready ">>, integer_to_binary(tai_conf:value(?C_READY)), $\n],
     help(<<"taiea_uptime_seconds">>, gauge, <<"Seconds since the VM started.">>),
     [<<"taiea_uptime_seconds ">>, num(tai_conf:uptime_seconds()), $\n],
     help(<<"taiea_memory_bytes">>, gauge, <<"Memory allocated by the VM (erlang:memory/0).">>),
     [[<<"taiea_memory_bytes{kind=\"">>, atom_to_binary(K), <<"\"} ">>, integer_to_binary(V), $\n]
      || {K, V} <- Mem],
     help(<<"taiea_process_count">>, gauge, <<"Erlang processes.">>),
     [<<"taiea_process_count ">>, integer_to_binary(erlang:system_info(process_count)), $\n],
     help(<<"taiea_run_queue">>, gauge, <<"Processes ready to run, all schedulers.">>),
     [<<"taiea_run_queue ">>, integer_to_binary(erlang:statistics(total_run_queue_lengths_all)),
      $\n],
     help(<<"taiea_http_connections">>, gauge, <<"Open HTTP connections.">>),
     [<<"taiea_http_connections ">>, integer_to_binary(tai_http:connections()), $\n],
     help(<<"taiea_http_inflight_requests">>, gauge, <<"HTTP requests being handled.">>),
     [<<"taiea_http_inflight_requests ">>, integer_to_binary(tai_conf:value(?C_INFLIGHT)), $\n],
     help(<<"taiea_http_requests_total">>, counter,
          <<"HTTP requests answered, by endpoint, method and status.">>),
     [[<<"taiea_http_requests_total{endpoint=\"">>, E, <<"\",method=\"">>, M,
       <<"\",status=\"">>, integer_to_binary(S), <<"\"} ">>, integer_to_binary(N), $\n]
      || {E, M, S, N} <- Http],
     help(<<"taiea_decisions_total">>, counter, <<"Marketplace decisions.">>),
     [[<<"taiea_decisions_total{decision=\"">>, atom_to_binary(D), <<"\"} ">>,
       integer_to_binary(N), $\n] || {D, N} <- Decisions],
     help(<<"taiea_entitlements">>, gauge, <<"Tenants by entitlement state.">>),
     [[<<"taiea_entitlements{state=\"">>, atom_to_binary(St), <<"\"} ">>, integer_to_binary(N),
       $\n] || {St, N} <- States]].

help(Name, Type, Text) ->
    [<<"# HELP ">>, Name, $\s, Text, <<"\n# TYPE ">>, Name, $\s, atom_to_binary(Type), $\n].

num(F) -> float_to_binary(float(F), [{decimals, 3}, compact]).

%%====================================================================

init([]) ->
    ?TAB = ets:new(?TAB, [named_table, public, set, {write_concurrency, true},
                          {read_concurrency, true}]),
    ets:insert(?TAB, {peak_bytes, current_bytes()}),
    erlang:send_after(?SAMPLE_MS, self(), sample),
    {ok, #{}}.

handle_call(_, _From, S) ->
    {reply, ok, S}.

handle_cast(_, S) ->
    {noreply, S}.

handle_info(sample, S) ->
    Now = current_bytes(),
    [{_, Peak}] = ets:lookup(?TAB, peak_bytes),
    Now > Peak andalso ets:insert(?TAB, {peak_bytes, Now}),
    erlang:send_after(?SAMPLE_MS, self(), sample),
    {noreply, S};
handle_info(_, S) ->
    {noreply, S}.
