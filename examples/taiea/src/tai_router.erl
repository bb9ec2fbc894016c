%%% Endpoints. handle/3 returns {Status, ExtraHeaders, Body, Meta}; Meta may carry endpoint,
%%% decision, event_id and seq (the fault-injection sequence number of the request).
-module(tai_router).

-include("tai.hrl").

-export([handle/3]).

-define(MAX_SLOW_MS, 60000).

handle(Method, Path, Req) ->
    case route(Path) of
        {Allowed, Fun, Faulty} ->
            case Method =:= Allowed of
                true when Faulty -> faulty(Fun, Path, Req);
                true -> with_endpoint(Fun(Req), Path);
                false ->
                    {405, [{<<"allow">>, Allowed}],
                     refusal(<<"method not allowed: ", Method/binary, " ", Path/binary,
                               " (allowed: ", Allowed/binary, ")">>),
                     #{endpoint => Path}}
            end;
        undefined ->
            Printable = printable(Path),
            {404, [], refusal(<<"not found: ", Printable/binary>>), #{endpoint => Printable}}
    end.

route(<<"/health">>) -> {<<"GET">>, fun health/1, true};
route(<<"/ready">>) -> {<<"GET">>, fun ready/1, false};
route(<<"/metrics">>) -> {<<"GET">>, fun metrics/1, false};
route(<<"/marketplace">>) -> {<<"POST">>, fun marketplace/1, true};
route(<<"/pubsub">>) -> {<<"POST">>, fun pubsub/1, true};
route(<<"/slow">>) -> {<<"GET">>, fun slow/1, false};
route(_) -> undefined.

faulty(Fun, Path, Req) ->
    case tai_faults:before_request() of
        {ok, Seq} ->
            {S, H, B, M} = with_endpoint(Fun(Req), Path),
            {S, H, B, M#{seq => Seq}};
        {error, Seq} ->
            {500, [], refusal(<<"injected fault: errors">>), #{endpoint => Path, seq => Seq}}
    end.

with_endpoint({S, H, B, M}, Path) -> {S, H, B, M#{endpoint => Path}}.

%%====================================================================

health(_Req) ->
    Uptime = trunc(tai_conf:uptime_seconds()),
    case tai_conf:get(fault) of
        noready ->
            {503, [], json(#{status => unavailable, uptime => Uptime,
                             reason => <<"injected fault: noready">>}), #{}};
        _ ->
            {200, [], json({object, [{status, ok}, {uptime, Uptime}]}), #{}}
    end.

ready(_Req) ->
    Ready = tai_conf:value(?C_READY) =:= 1
        andalso tai_conf:value(?C_DRAINING) =:= 0
        andalso is_pid(whereis(tai_mcp_server))
        andalso is_pid(whereis(tai_governor)),
    case Ready of
        true ->
            {200, [], json({object, [{ready, true},
                                     {dependencies, [<<"mcp_server">>, <<"governor">>]}]}), #{}};
        false ->
            {503, [], json(#{ready => false}), #{}}
    end.

metrics(_Req) ->
    {200, [{<<"content-type">>, <<"text/plain; version=0.0.4; charset=utf-8">>}],
     tai_metrics:render(), #{}}.

slow(#{query := Q}) ->
    Params = case catch uri_string:dissect_query(Q) of
                 L when is_list(L) -> [{to_bin(K), V} || {K, V} <- L];
                 _ -> []
             end,
    case lists:keyfind(<<"ms">>, 1, Params) of
        {_, V} ->
            case catch binary_to_integer(to_bin(V)) of
                N when is_integer(N), N >= 0, N =< ?MAX_SLOW_MS ->
                    receive after N -> ok end,
                    {200, [], json({object, [{slept_ms, N}]}), #{}};
                _ ->
                    bad_request(<<"ms must be an integer from 0 to 60000">>)
            end;
        false ->
            bad_request(<<"missing query parameter: ms">>)
    end.

to_bin(B) when is_binary(B) -> B;
to_bin(L) when is_list(L) -> unicode:characters_to_binary(L);
to_bin(true) -> <<>>.

%%====================================================================
%% POST /marketplace

marketplace(#{body := Body}) ->
    case object(Body) of
        {ok, Obj} ->
            try marketplace_event(Obj) of
                Result -> Result
            catch
                throw:{bad, Why} -> bad_request(Why)
            end;
        {error, Why} ->
            bad_request(Why)
    end.

marketplace_event(Obj) ->
    Tenant = required_string(<<"tenant_id">>, Obj),
    EventType = required_string(<<"event_type">>, Obj),
    Data = case maps:get(<<"event_data">>, Obj, #{}) of
               D when is_map(D) -> D;
               null -> #{};
               _ -> throw({bad, <<"event_data must be an object">>})
           end,
    EntId = optional_string(<<"entitlement_id">>, Obj),
    Event = event_kind(EventType, optional_string(<<"action">>, Obj)),
    Sku = case maps:get(<<"sku">>, Data, null) of
              S when is_binary(S), S =/= <<>> -> S;
              null when Event =:= sku_changed -> throw({bad, <<"missing field: event_data.sku">>});
              null -> null;
              _ -> throw({bad, <<"event_data.sku must be a non-empty string">>})
          end,
    #{decision := Decision, reason := Reason, previous_state := Prev, state := Next,
      sku := NewSku, entitlement_id := NewEnt} = tai_governor:event(Tenant, Event, Sku, EntId),
    tai_metrics:count_decision(Decision),
    EventId = event_id(),
    {202, [],
     json({object, [{event_id, EventId}, {decision, Decision}, {reason, Reason}, {state, Next},
                    {previous_state, Prev}, {tenant_id, Tenant}, {event_type, Event},
                    {entitlement_id, NewEnt}, {sku, NewSku}]}),
     #{decision => Decision, event_id => EventId}}.

event_kind(<<"grant">>, _) -> grant;
event_kind(<<"revoke">>, _) -> revoke;
event_kind(<<"suspend">>, _) -> suspend;
event_kind(<<"sku_changed">>, _) -> sku_changed;
event_kind(<<"entitlement">>, null) -> throw({bad, <<"missing field: action">>});
event_kind(<<"entitlement">>, <<"grant">>) -> grant;
event_kind(<<"entitlement">>, <<"revoke">>) -> revoke;
event_kind(<<"entitlement">>, <<"suspend">>) -> suspend;
event_kind(<<"entitlement">>, Action) ->
    throw({bad, <<"unknown action: ", (printable(Action))/binary,
                  " (grant, revoke or suspend)">>});
event_kind(Other, _) ->
    throw({bad, <<"unknown event_type: ", (printable(Other))/binary,
                  " (grant, revoke, suspend, sku_changed or entitlement)">>}).

event_id() ->
    N = erlang:unique_integer([positive, monotonic]),
    T = erlang:system_time(millisecond),
    <<"evt-", (integer_to_binary(T, 36))/binary, "-", (integer_to_binary(N))/binary>>.

%%====================================================================
%% POST /pubsub (a Pub/Sub push delivery)

pubsub(#{body := Body}) ->
    case object(Body) of
        {ok, Obj} ->
            try pubsub_message(Obj) of
                Result -> Result
            catch
                throw:{bad, Why} -> bad_request(Why)
            end;
        {error, Why} ->
            bad_request(Why)
    end.

pubsub_message(Obj) ->
    Msg = case maps:get(<<"message">>, Obj, undefined) of
              M when is_map(M) -> M;
              undefined -> throw({bad, <<"missing field: message">>});
              _ -> throw({bad, <<"message must be an object">>})
          end,
    _ = required_string(<<"subscription">>, Obj),
    case maps:get(<<"attributes">>, Msg, #{}) of
        A when is_map(A); A =:= null -> ok;
        _ -> throw({bad, <<"message.attributes must be an object">>})
    end,
    Bytes = case maps:get(<<"data">>, Msg, null) of
                null -> 0;
                Data when is_binary(Data) -> byte_size(base64_decode(Data));
                _ -> throw({bad, <<"message.data must be a base64 string">>})
            end,
    MessageId = case maps:get(<<"messageId">>, Msg, maps:get(<<"message_id">>, Msg, null)) of
                    null -> null;
                    Id when is_binary(Id), Id =/= <<>> -> Id;
                    _ -> throw({bad, <<"message.messageId must be a non-empty string">>})
                end,
    Duplicate = MessageId =/= null andalso tai_mcp_server:seen(MessageId),
    {202, [],
     json({object, [{subscription, acknowledged}, {duplicate, Duplicate},
                    {message_id, MessageId}, {bytes, Bytes}]}),
     #{decision => accept}}.

base64_decode(Data) ->
    Clean = binary:replace(Data, [<<"\n">>, <<"\r">>, <<" ">>], <<>>, [global]),
    Valid = byte_size(Clean) rem 4 =:= 0
        andalso lists:all(fun(C) -> (C >= $A andalso C =< $Z) orelse (C >= $a andalso C =< $z)
                                        orelse (C >= $0 andalso C =< $9) orelse C =:= $+
                                        orelse C =:= $/ orelse C =:= $= end,
                          binary_to_list(Clean)),
    case Valid andalso (catch base64:decode(Clean)) of
        B when is_binary(B) -> B;
        _ -> throw({bad, <<"message.data is not valid base64">>})
    end.

%%====================================================================

object(Body) ->
    case tai_json:decode(Body) of
        {ok, Obj} when is_map(Obj) -> {ok, Obj};
        {ok, _} -> {error, <<"request body must be a JSON object">>};
        {error, Why} -> {error, <<"malformed JSON: ", Why/binary>>}
    end.

required_string(Key, Obj) ->
    case maps:get(Key, Obj, undefined) of
        V when is_binary(V), V =/= <<>>, byte_size(V) =< 256 -> V;
        undefined -> throw({bad, <<"missing field: ", Key/binary>>});
        null -> throw({bad, <<"missing field: ", Key/binary>>});
        _ -> throw({bad, <<Key/binary, " must be a non-empty string of at most 256 bytes">>})
    end.

optional_string(Key, Obj) ->
    case maps:get(Key, Obj, null) of
        null -> null;
        V when is_binary(V), V =/= <<>>, byte_size(V) =< 256 -> V;
        _ -> throw({bad, <<Key/binary, " must be a non-empty string of at most 256 bytes">>})
    end.

bad_request(Why) ->
    {400, [], refusal(Why), #{decision => refuse}}.

refusal(Why) ->
    json({object, [{decision, refuse}, {error, Why}]}).

json(Term) ->
    tai_json:encode(Term).

%% For error messages: printable ASCII only, at most 100 bytes.
printable(B) when byte_size(B) > 100 -> <<(printable(binary:part(B, 0, 100)))/binary, "...">>;
printable(B) -> << <<(if C >= 16#20, C < 16#7f -> C; true -> $? end)>> || <<C>> <= B >>.
