%%% Stdout JSON receipts, one per line.
%%%
%%% Request receipts are sent as cheap messages to this process, which formats them and writes
%%% them to stdout in batches (every ?FLUSH_MS or ?MAX_BUFFER bytes), so logging never stands
%%% in the way of a request. Lifecycle receipts (startup, shutdown, error) are written at once.
-module(tai_log).
-behaviour(gen_server).

-include("tai.hrl").

-export([start_link/0, request/7, emit/1, emit_now/1, sync/0, ts/0, ts/1]).
-export([init/1, handle_call/3, handle_cast/2, handle_info/2, terminate/2]).

-define(FLUSH_MS, 25).
-define(MAX_BUFFER, 65536).
-define(MAX_QUEUE, 50000).

start_link() ->
    gen_server:start_link({local, ?MODULE}, ?MODULE, [], []).

%% One request receipt. Formatting happens in the logger, off the request path. When stdout
%% does not keep up (nobody reads the pipe), receipts are dropped and counted instead of piling
%% up in the logger's mailbox; the count is reported in an error receipt once it drains.
request(Endpoint, Method, Status, LatencyUs, Decision, EventId, SysTimeMs) ->
    case whereis(?MODULE) of
        undefined ->
            ok;
        Pid ->
            case erlang:process_info(Pid, message_queue_len) of
                {message_queue_len, N} when N > ?MAX_QUEUE ->
                    tai_conf:incr(?C_LOG_DROPPED),
                    ok;
                _ ->
                    Pid ! {request, SysTimeMs, Endpoint, Method, Status, LatencyUs, Decision,
                           EventId},
                    ok
            end
    end.

%% A receipt given as an ordered list of {Key, Value}; "ts" is added after "kind".
emit(Pairs) ->
    gen_server:cast(?MODULE, {line, line(Pairs)}).

%% Written (and flushed together with everything buffered before it) before returning, unless
%% stdout is stuck for 10 s (then the caller goes on without it).
emit_now(Pairs) ->
    Line = line(Pairs),
    case whereis(?MODULE) of
        undefined ->
            file:write(user, Line);
        _ ->
            try
                gen_server:call(?MODULE, {line_now, Line}, 10000)
            catch
                exit:{timeout, _} -> {error, timeout}
            end
    end.

sync() ->
    case whereis(?MODULE) of
        undefined -> ok;
        _ -> catch gen_server:call(?MODULE, sync, 10000)
    end.

ts() ->
    ts(erlang:system_time(millisecond)).

ts(Ms) ->
    list_to_binary(calendar:system_time_to_rfc3339(Ms, [{unit, millisecond}, {offset, "Z"}])).

line([{kind, _} = Kind | Rest]) ->
    [tai_json:encode({object, [Kind, {ts, ts()} | Rest]}), $\n];
line(Pairs) ->
    [tai_json:encode({object, [{ts, ts()} | Pairs]}), $\n].

%%====================================================================

init([]) ->
    process_flag(trap_exit, true),
    process_flag(message_queue_data, off_heap),
    {ok, #{buf => [], size => 0, timer => undefined}}.

handle_call({line_now, Line}, _From, S) ->
    S1 = flush(S),
    file:write(user, Line),
    {reply, ok, S1};
handle_call(sync, _From, S) ->
    {reply, ok, flush(S)}.

handle_cast({line, Line}, S) ->
    {noreply, buffer(Line, S)}.

handle_info({request, Ms, Endpoint, Method, Status, LatencyUs, Decision, EventId}, S) ->
    Line = [tai_json:encode({object, [{kind, request},
                                      {ts, ts(Ms)},
                                      {endpoint, Endpoint},
                                      {method, Method},
                                      {http_status, Status},
                                      {latency_ms, LatencyUs / 1000},
                                      {decision, Decision},
                                      {event_id, EventId}]}), $\n],
    {noreply, buffer(Line, S)};
handle_info(flush, S) ->
    {noreply, flush(S#{timer := undefined})};
handle_info(_, S) ->
    {noreply, S}.

terminate(_, S) ->
    flush(S),
    ok.

buffer(Line, #{buf := Buf, size := Size, timer := T} = S) ->
    S1 = S#{buf := [Buf | Line], size := Size + iolist_size(Line)},
    case maps:get(size, S1) >= ?MAX_BUFFER of
        true -> flush(S1);
        false when T =:= undefined ->
            S1#{timer := erlang:send_after(?FLUSH_MS, self(), flush)};
        false -> S1
    end.

flush(#{buf := []} = S) ->
    dropped(),
    S;
flush(#{buf := Buf} = S) ->
    file:write(user, Buf),
    dropped(),
    S#{buf := [], size := 0}.

dropped() ->
    case tai_conf:value(?C_LOG_DROPPED) of
        0 -> ok;
        N ->
            tai_conf:set(?C_LOG_DROPPED, 0),
            file:write(user, line([{kind, error}, {component, receipts},
                                   {error_code, receipts_dropped}, {decision, refuse},
                                   {reason, <<"stdout did not keep up">>}, {count, N}]))
    end.
