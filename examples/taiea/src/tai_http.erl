%%% HTTP/1.1 server on gen_tcp: a listener, a pool of acceptors and one process per connection.
%%%
%%% Keep-alive is on by default (HTTP/1.1), every response goes out in one gen_tcp:send/2 with
%%% Content-Length set, and sockets have {nodelay, true}: no Nagle / delayed-ACK stalls.
%%% drain/1 is the graceful half of a shutdown: the listen socket is closed, idle connections
%%% are closed, requests in flight finish (bounded by a deadline) and are answered with
%%% "connection: close".
-module(tai_http).
-behaviour(gen_server).

-include("tai.hrl").

-export([start_link/0, port/0, drain/1, connections/0]).
-export([init/1, handle_call/3, handle_cast/2, handle_info/2, terminate/2]).
-export([acceptor/1, connection/0]).

-define(ACCEPTORS, 16).
-define(CONNS, tai_http_conns).
-define(IDLE_TIMEOUT, 60000).
-define(MAX_HEAD, 65536).
-define(MAX_BODY, 1048576).

start_link() ->
    gen_server:start_link({local, ?MODULE}, ?MODULE, [], []).

%% The port actually listened on (PORT=0 picks a free one).
port() ->
    gen_server:call(?MODULE, port).

connections() ->
    case ets:info(?CONNS, size) of
        undefined -> 0;
        N -> N
    end.

%% Stop accepting, close idle connections, let requests in flight finish.
%% Returns {drained, N} or {timeout, Left} (the connections left are killed).
drain(TimeoutMs) ->
    tai_conf:set(?C_DRAINING, 1),
    catch gen_server:call(?MODULE, close_listener, 5000),
    Conns = [P || {P} <- ets:tab2list(?CONNS)],
    [P ! drain || P <- Conns],
    Deadline = erlang:monotonic_time(millisecond) + TimeoutMs,
    wait_drained(Deadline, length(Conns)).

wait_drained(Deadline, N) ->
    case ets:info(?CONNS, size) of
        0 -> {drained, N};
        Left ->
            case erlang:monotonic_time(millisecond) >= Deadline of
                true ->
                    [exit(P, kill) || {P} <- ets:tab2list(?CONNS)],
                    {timeout, Left};
                false ->
                    receive after 10 -> ok end,
                    wait_drained(Deadline, N)
            end
    end.

%%====================================================================
%% Listener
%%====================================================================

init([]) ->
    process_flag(trap_exit, true),
    #{host := Host, port := Port} = tai_conf:get(),
    ?CONNS = ets:new(?CONNS, [named_table, public, set, {write_concurrency, true}]),
    Family = case tuple_size(Host) of 8 -> [inet6]; _ -> [inet] end,
    Opts = Family ++ [binary, {packet, raw}, {active, false}, {reuseaddr, true},
                      {nodelay, true}, {backlog, 1024}, {ip, Host},
                      {send_timeout, 30000}, {send_timeout_close, true}],
    case gen_tcp:listen(Port, Opts) of
        {ok, LSock} ->
            {ok, Actual} = inet:port(LSock),
            [spawn_link(?MODULE, acceptor, [LSock]) || _ <- lists:seq(1, ?ACCEPTORS)],
            {ok, #{lsock => LSock, port => Actual}};
        {error, Reason} ->
            {stop, {listen_failed, Port, Reason}}
    end.

handle_call(port, _From, #{port := P} = S) ->
    {reply, P, S};
handle_call(close_listener, _From, #{lsock := L} = S) ->
    gen_tcp:close(L),
    {reply, ok, S#{lsock := closed}};
handle_call(close_listener, _From, S) ->
    {reply, ok, S}.

handle_cast(_, S) ->
    {noreply, S}.

handle_info({'EXIT', _Acceptor, normal}, S) ->
    {noreply, S};
handle_info({'EXIT', _Acceptor, Reason}, #{lsock := L} = S) when L =/= closed ->
    {stop, {acceptor_died, Reason}, S};
handle_info(_, S) ->
    {noreply, S}.

terminate(_, #{lsock := L}) when L =/= closed ->
    gen_tcp:close(L);
terminate(_, _) ->
    ok.

acceptor(LSock) ->
    case gen_tcp:accept(LSock) of
        {ok, Sock} ->
            Pid = spawn(?MODULE, connection, []),
            case gen_tcp:controlling_process(Sock, Pid) of
                ok -> Pid ! {socket, Sock};
                _ -> gen_tcp:close(Sock), exit(Pid, kill)
            end,
            acceptor(LSock);
        {error, closed} ->
            ok;
        {error, _} ->
            %% emfile and the like: back off a little instead of spinning
            receive after 10 -> ok end,
            acceptor(LSock)
    end.

%%====================================================================
%% One connection
%%====================================================================

connection() ->
    receive
        {socket, Sock} ->
            ets:insert(?CONNS, {self()}),
            Draining = tai_conf:value(?C_DRAINING) =:= 1,
            try
                loop(Sock, <<>>, #{draining => Draining, continued => false})
            after
                ets:delete(?CONNS, self()),
                gen_tcp:close(Sock)
            end
    after 5000 ->
        ok
    end.

loop(Sock, Buf, St) ->
    case parse(Buf) of
        {ok, Req, Rest} ->
            case serve(Sock, Req, St) of
                keep_alive -> loop(Sock, Rest, St#{continued := false});
                close -> ok
            end;
        {more, Expect} ->
            St1 = maybe_continue(Sock, Expect, St),
            wait(Sock, Buf, St1);
        {error, Status, Why} ->
            send_error(Sock, Status, Why)
    end.

maybe_continue(Sock, true, #{continued := false} = St) ->
    gen_tcp:send(Sock, <<"HTTP/1.1 100 Continue\r\n\r\n">>),
    St#{continued := true};
maybe_continue(_, _, St) ->
    St.

%% Wait for more bytes. While draining, an idle connection is closed at once (after serving
%% whatever the client had already sent).
wait(Sock, <<>>, #{draining := true}) ->
    pending_then_close(Sock);
wait(Sock, Buf, St) ->
    ok = inet:setopts(Sock, [{active, once}]),
    receive
        {tcp, Sock, Data} ->
            loop(Sock, <<Buf/binary, Data/binary>>, St);
        {tcp_closed, Sock} ->
            ok;
        {tcp_error, Sock, _} ->
            ok;
        drain ->
            case Buf of
                <<>> -> pending_then_close(Sock);
                _ -> wait(Sock, Buf, St#{draining := true})
            end
    after ?IDLE_TIMEOUT ->
        ok
    end.

pending_then_close(Sock) ->
    inet:setopts(Sock, [{active, false}]),
    Pending =
        receive
            {tcp, Sock, D} -> D
        after 0 ->
            case gen_tcp:recv(Sock, 0, 0) of
                {ok, D} -> D;
                _ -> <<>>
            end
        end,
    case Pending of
        <<>> -> ok;
        _ -> loop(Sock, Pending, #{draining => true, continued => false})
    end.

serve(Sock, #{method := Method, path := Path} = Req, St) ->
    T0 = erlang:monotonic_time(microsecond),
    tai_conf:incr(?C_INFLIGHT),
    {Status, Headers, Body, Meta} =
        try
            tai_router:handle(Method, Path, Req)
        catch
            Class:Reason:Stack ->
                tai_log:emit([{kind, error}, {component, http}, {error_code, internal_error},
                              {decision, refuse},
                              {reason, iolist_to_binary(io_lib:format("~p:~0p ~0p",
                                                                      [Class, Reason, Stack]))}]),
                {500, [], tai_json:encode(#{decision => refuse, error => <<"internal error">>}),
                 #{endpoint => Path}}
        end,
    Draining = maps:get(draining, St) orelse tai_conf:value(?C_DRAINING) =:= 1,
    KeepAlive = keep_alive(Req) andalso not Draining,
    Result = gen_tcp:send(Sock, response(Status, Headers, Body, KeepAlive)),
    tai_conf:decr(?C_INFLIGHT),
    tai_conf:incr(?C_REQUESTS),
    Latency = erlang:monotonic_time(microsecond) - T0,
    Endpoint = maps:get(endpoint, Meta, Path),
    tai_metrics:count(Endpoint, Method, Status),
    Decision =
        case Meta of
            #{decision := D} -> D;
            _ when Status < 400 -> accept;
            _ -> refuse
        end,
    tai_log:request(Endpoint, Method, Status, Latency, Decision, maps:get(event_id, Meta, null),
                    erlang:system_time(millisecond)),
    tai_faults:after_response(maps:get(seq, Meta, undefined)),
    case {Result, KeepAlive} of
        {ok, true} -> keep_alive;
        _ -> close
    end.

keep_alive(#{vsn := {1, 1}, connection := C}) -> C =/= close;
keep_alive(#{connection := C}) -> C =:= keep_alive.

%% A request that could not be parsed: answered, counted and logged as endpoint "other".
send_error(Sock, Status, Why) ->
    Body = tai_json:encode({object, [{decision, refuse}, {error, Why}]}),
    gen_tcp:send(Sock, response(Status, [], Body, false)),
    tai_conf:incr(?C_REQUESTS),
    tai_metrics:count(<<"other">>, <<"-">>, Status),
    tai_log:request(<<"other">>, <<"-">>, Status, 0, refuse, null,
                    erlang:system_time(millisecond)),
    linger(Sock).

%% Closing a socket with unread input makes the kernel send RST, which can destroy the error
%% response before the client reads it: half-close, then discard input for a while.
linger(Sock) ->
    gen_tcp:shutdown(Sock, write),
    linger(Sock, erlang:monotonic_time(millisecond) + 1000, 4 * ?MAX_BODY).

linger(Sock, Deadline, Budget) ->
    Left = Deadline - erlang:monotonic_time(millisecond),
    case Left > 0 andalso Budget > 0 andalso gen_tcp:recv(Sock, 0, Left) of
        {ok, Data} -> linger(Sock, Deadline, Budget - byte_size(Data));
        _ -> ok
    end.

%%====================================================================
%% Parsing (erlang:decode_packet does the request line and the headers)
%%====================================================================

parse(<<"\r\n", Rest/binary>>) ->
    parse(Rest);
parse(<<>>) ->
    {more, false};
parse(Buf) ->
    case erlang:decode_packet(http_bin, Buf, [{packet_size, ?MAX_HEAD}]) of
        {more, _} when byte_size(Buf) > ?MAX_HEAD ->
            {error, 431, <<"request head too large">>};
        {more, _} ->
            {more, false};
        {ok, {http_request, Method, Uri, Vsn}, Rest} ->
            case target(Uri) of
                {ok, Path, Query} ->
                    Req = #{method => method(Method), path => Path, query => Query, vsn => Vsn,
                            connection => default, length => undefined, expect => false,
                            chunked => false},
                    headers(Rest, Req, byte_size(Buf));
                error ->
                    {error, 400, <<"unsupported request target">>}
            end;
        {ok, _, _} ->
            {error, 400, <<"malformed request line">>};
        {error, _} when byte_size(Buf) >= ?MAX_HEAD ->
            {error, 431, <<"request head too large">>};
        {error, _} ->
            {error, 400, <<"malformed request line">>}
    end.

headers(Buf, Req, Total) ->
    case erlang:decode_packet(httph_bin, Buf, [{packet_size, ?MAX_HEAD}]) of
        {more, _} when Total > ?MAX_HEAD ->
            {error, 431, <<"request head too large">>};
        {more, _} ->
            {more, false};
        {ok, {http_header, _, Name, _, Value}, Rest} ->
            case header(Name, Value, Req) of
                {error, Why} -> {error, 400, Why};
                Req1 -> headers(Rest, Req1, Total)
            end;
        {ok, http_eoh, Rest} ->
            body(Rest, Req);
        {ok, _, _} ->
            {error, 400, <<"malformed header">>};
        {error, _} when Total >= ?MAX_HEAD ->
            {error, 431, <<"request head too large">>};
        {error, _} ->
            {error, 400, <<"malformed header">>}
    end.

header(Name, V, Req) when is_atom(Name) ->
    header(atom_to_binary(Name, latin1), V, Req);
header(Name, V, Req) ->
    case string:lowercase(Name) of
        <<"content-length">> ->
            try binary_to_integer(string:trim(V)) of
                N when N >= 0 -> Req#{length := N};
                _ -> {error, <<"invalid content-length">>}
            catch
                error:badarg -> {error, <<"invalid content-length">>}
            end;
        <<"connection">> ->
            L = string:lowercase(V),
            case {binary:match(L, <<"close">>), binary:match(L, <<"keep-alive">>)} of
                {nomatch, nomatch} -> Req;
                {nomatch, _} -> Req#{connection := keep_alive};
                _ -> Req#{connection := close}
            end;
        <<"transfer-encoding">> ->
            Req#{chunked := binary:match(string:lowercase(V), <<"chunked">>) =/= nomatch};
        <<"expect">> ->
            Req#{expect := string:lowercase(string:trim(V)) =:= <<"100-continue">>};
        _ ->
            Req
    end.

body(_Rest, #{chunked := true}) ->
    {error, 411, <<"chunked request bodies are not supported: send Content-Length">>};
body(Rest, #{length := undefined} = Req) ->
    {ok, Req#{body => <<>>}, Rest};
body(_Rest, #{length := N}) when N > ?MAX_BODY ->
    {error, 413, <<"request body too large">>};
body(Rest, #{length := N} = Req) ->
    case Rest of
        <<Body:N/binary, Rest1/binary>> -> {ok, Req#{body => Body}, Rest1};
        _ -> {more, maps:get(expect, Req)}
    end.

target({abs_path, P}) -> split_query(P);
target({absoluteURI, _Scheme, _Host, _Port, P}) -> split_query(P);
target(_) -> error.

split_query(P) ->
    case binary:split(P, <<"?">>) of
        [Path, Q] -> {ok, Path, Q};
        [Path] -> {ok, Path, <<>>}
    end.

method(M) when is_atom(M) -> atom_to_binary(M, latin1);
method(M) -> M.

%%====================================================================
%% Responses: one iolist, one send
%%====================================================================

response(Status, Headers, Body, KeepAlive) ->
    [<<"HTTP/1.1 ">>, status_line(Status),
     <<"\r\nserver: tai_autonomics\r\ndate: ">>, http_date(),
     <<"\r\ncontent-length: ">>, integer_to_binary(iolist_size(Body)),
     case lists:keymember(<<"content-type">>, 1, Headers) of
         true -> [];
         false -> <<"\r\ncontent-type: application/json">>
     end,
     [[<<"\r\n">>, K, <<": ">>, V] || {K, V} <- Headers],
     case KeepAlive of
         true -> <<"\r\nconnection: keep-alive\r\n\r\n">>;
         false -> <<"\r\nconnection: close\r\n\r\n">>
     end,
     Body].

%% The Date header, formatted at most once a second per connection.
http_date() ->
    Now = erlang:system_time(second),
    case get(tai_date) of
        {Now, Bin} -> Bin;
        _ ->
            Bin = list_to_binary(httpd_date(Now)),
            put(tai_date, {Now, Bin}),
            Bin
    end.

httpd_date(Secs) ->
    {{Y, Mo, D}, {H, Mi, S}} = calendar:system_time_to_universal_time(Secs, second),
    Day = element(calendar:day_of_the_week(Y, Mo, D),
                  {"Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"}),
    Month = element(Mo, {"Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct",
                         "Nov", "Dec"}),
    io_lib:format("~s, ~2..0w ~s ~4..0w ~2..0w:~2..0w:~2..0w GMT", [Day, D, Month, Y, H, Mi, S]).

status_line(200) -> <<"200 OK">>;
status_line(202) -> <<"202 Accepted">>;
status_line(400) -> <<"400 Bad Request">>;
status_line(404) -> <<"404 Not Found">>;
status_line(405) -> <<"405 Method Not Allowed">>;
status_line(411) -> <<"411 Length Required">>;
status_line(413) -> <<"413 Payload Too Large">>;
status_line(431) -> <<"431 Request Header Fields Too Large">>;
status_line(500) -> <<"500 Internal Server Error">>;
status_line(503) -> <<"503 Service Unavailable">>;
status_line(N) -> <<(integer_to_binary(N))/binary, " Status">>.
