%%% The governor: one entitlement per tenant, a state machine with deterministic decisions.
%%%
%%% States: none (never seen), active, suspended, revoked. transition/2 is the whole table
%%% (README.md lists it); the gen_server serialises events so that concurrent events for the
%%% same tenant are decided one after the other. State lives in a protected ETS table.
%%%
%%%   event \ state   none              active             suspended          revoked
%%%   grant           accept->active    refuse             accept->active     accept->active
%%%                                     already_active
%%%   suspend         refuse            accept->suspended  refuse             refuse
%%%                   no_entitlement                       already_suspended  entitlement_revoked
%%%   revoke          refuse            accept->revoked    accept->revoked    refuse
%%%                   no_entitlement                                          already_revoked
%%%   sku_changed     accept->active    accept->active     refuse             refuse
%%%                                                        entitlement_suspended
%%%                                                                           entitlement_revoked
-module(tai_governor).
-behaviour(gen_server).

-export([start_link/0, event/4, lookup/1, state_counts/0, transition/2]).
-export([init/1, handle_call/3, handle_cast/2]).

-define(TAB, tai_entitlements).

-type state() :: none | active | suspended | revoked.
-type event() :: grant | suspend | revoke | sku_changed.

start_link() ->
    gen_server:start_link({local, ?MODULE}, ?MODULE, [], []).

%% Decide one event for a tenant. Returns a map: decision, reason, previous_state, state, sku,
%% entitlement_id.
event(Tenant, Event, Sku, EntitlementId) ->
    gen_server:call(?MODULE, {event, Tenant, Event, Sku, EntitlementId}, 10000).

lookup(Tenant) ->
    case ets:lookup(?TAB, Tenant) of
        [{_, St, Sku, Ent}] -> #{state => St, sku => Sku, entitlement_id => Ent};
        [] -> #{state => none, sku => null, entitlement_id => null}
    end.

state_counts() ->
    Counts = lists:foldl(fun({_, St, _, _}, Acc) -> maps:update_with(St, fun(N) -> N + 1 end, 1, Acc)
                         end, #{}, ets:tab2list(?TAB)),
    [{St, maps:get(St, Counts, 0)} || St <- [active, suspended, revoked]].

%% The transition table: {accept | refuse, Reason, NewState}.
-spec transition(state(), event()) -> {accept | refuse, atom(), state()}.
transition(none, grant) -> {accept, granted, active};
transition(active, grant) -> {refuse, already_active, active};
transition(suspended, grant) -> {accept, reinstated, active};
transition(revoked, grant) -> {accept, regranted, active};
transition(active, suspend) -> {accept, suspended, suspended};
transition(none, suspend) -> {refuse, no_entitlement, none};
transition(suspended, suspend) -> {refuse, already_suspended, suspended};
transition(revoked, suspend) -> {refuse, entitlement_revoked, revoked};
transition(active, revoke) -> {accept, revoked, revoked};
transition(suspended, revoke) -> {accept, revoked, revoked};
transition(none, revoke) -> {refuse, no_entitlement, none};
transition(revoked, revoke) -> {refuse, already_revoked, revoked};
transition(none, sku_changed) -> {accept, sku_assigned, active};
transition(active, sku_changed) -> {accept, sku_changed, active};
transition(suspended, sku_changed) -> {refuse, entitlement_suspended, suspended};
transition(revoked, sku_changed) -> {refuse, entitlement_revoked, revoked}.

%%====================================================================

init([]) ->
    ?TAB = ets:new(?TAB, [named_table, protected, set, {read_concurrency, true}]),
    {ok, #{}}.

handle_call({event, Tenant, Event, Sku, EntId}, _From, S) ->
    #{state := Prev, sku := OldSku, entitlement_id := OldEnt} = lookup(Tenant),
    {Decision, Reason, Next} = transition(Prev, Event),
    {NewSku, NewEnt} =
        case Decision of
            accept -> {pick(Sku, OldSku), pick(EntId, OldEnt)};
            refuse -> {OldSku, OldEnt}
        end,
    case {Decision, Next} of
        {refuse, none} -> ok;
        _ -> ets:insert(?TAB, {Tenant, Next, NewSku, NewEnt})
    end,
    {reply, #{decision => Decision, reason => Reason, previous_state => Prev, state => Next,
              sku => NewSku, entitlement_id => NewEnt}, S}.

handle_cast(_, S) ->
    {noreply, S}.

pick(null, Old) -> Old;
pick(New, _) -> New.
