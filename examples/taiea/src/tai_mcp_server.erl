%%% The mcp_server dependency: owns the Pub/Sub de-duplication table (message ids seen).
%%% ets:insert_new/2 is atomic, so the first delivery of a messageId wins under concurrency.
%%% The table is bounded: past ?MAX_IDS ids it is cleared (a reference release, not a ledger).
-module(tai_mcp_server).
-behaviour(gen_server).

-export([start_link/0, seen/1]).
-export([init/1, handle_call/3, handle_cast/2]).

-define(TAB, tai_pubsub_seen).
-define(MAX_IDS, 200000).

start_link() ->
    gen_server:start_link({local, ?MODULE}, ?MODULE, [], []).

%% true when the message id was delivered before.
seen(MessageId) ->
    case ets:insert_new(?TAB, {MessageId}) of
        true ->
            ets:info(?TAB, size) > ?MAX_IDS andalso gen_server:cast(?MODULE, trim),
            false;
        false ->
            true
    end.

init([]) ->
    ?TAB = ets:new(?TAB, [named_table, public, set, {write_concurrency, true}]),
    {ok, #{}}.

handle_call(_, _From, S) ->
    {reply, ok, S}.

handle_cast(trim, S) ->
    ets:info(?TAB, size) > ?MAX_IDS andalso ets:delete_all_objects(?TAB),
    {noreply, S}.
