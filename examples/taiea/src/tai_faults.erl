%%% Fault injection, chosen at build time (sys.config) or with TAIEA_FAULT at start.
%%%
%%% Requests to /health, /marketplace and /pubsub are numbered (1, 2, ...) and the fault acts on
%%% that number, so it is deterministic:
%%%   slow    every 5th request (20 %) sleeps 300 ms before it is answered: p95 > 250 ms
%%%   errors  every 20th request (5 %; TAIEA_ERROR_EVERY=N: every Nth) is answered 500
%%%   delay   every request waits TAIEA_DELAY_MS (default 20 ms) first: slower, within the limits
%%%   crash   the VM exits with status 1 right after answering request number TAIEA_CRASH_AFTER
%%% Not request driven:
%%%   leak    a process holds on to 2 MB of binaries more every 100 ms (~20 MB/s)
%%%   noready /ready and /health answer 503 forever (the port listens)
%%%   slowstart /ready answers 503 for the first 6 s
%%% prod_errors / prod_slow / prod_delay act as errors / slow / delay when TAIEA_ENV=prod, else
%%% as none.
-module(tai_faults).
-behaviour(gen_server).

-include("tai.hrl").

-export([start_link/0, before_request/0, after_response/1]).
-export([init/1, handle_call/3, handle_cast/2, handle_info/2]).

-define(SLOW_EVERY, 5).
-define(SLOW_MS, 300).
-define(LEAK_BYTES, 2097152).
-define(LEAK_EVERY_MS, 100).

start_link() ->
    gen_server:start_link({local, ?MODULE}, ?MODULE, [], []).

%% {ok, Seq} to go on, {error, Seq} to answer 500.
before_request() ->
    Seq = tai_conf:incr(?C_FAULT_SEQ),
    case tai_conf:get(fault) of
        slow when Seq rem ?SLOW_EVERY =:= 0 ->
            receive after ?SLOW_MS -> ok end,
            {ok, Seq};
        errors ->
            case Seq rem tai_conf:get(error_every) of
                0 -> {error, Seq};
                _ -> {ok, Seq}
            end;
        delay ->
            receive after tai_conf:get(delay_ms) -> ok end,
            {ok, Seq};
        _ ->
            {ok, Seq}
    end.

after_response(undefined) ->
    ok;
after_response(Seq) ->
    case tai_conf:get() of
        #{fault := crash, crash_after := N} when Seq >= N ->
            tai_log:emit_now([{kind, error}, {component, fault}, {error_code, crash},
                              {decision, refuse},
                              {reason, iolist_to_binary(io_lib:format(
                                         "injected fault: crash after ~b requests", [N]))},
                              {requests_processed, tai_conf:value(?C_REQUESTS)}]),
            erlang:halt(1, [{flush, true}]);
        _ ->
            ok
    end.

%%====================================================================
%% The leak

init([]) ->
    case tai_conf:get(fault) of
        leak -> erlang:send_after(?LEAK_EVERY_MS, self(), leak);
        _ -> ok
    end,
    {ok, #{held => []}}.

handle_call(_, _From, S) ->
    {reply, ok, S}.

handle_cast(_, S) ->
    {noreply, S}.

handle_info(leak, #{held := Held} = S) ->
    %% binary:copy/2 writes every byte, so the pages are really resident.
    Chunk = binary:copy(<<"leak">>, ?LEAK_BYTES div 4),
    erlang:send_after(?LEAK_EVERY_MS, self(), leak),
    {noreply, S#{held := [Chunk | Held]}};
handle_info(_, S) ->
    {noreply, S}.
