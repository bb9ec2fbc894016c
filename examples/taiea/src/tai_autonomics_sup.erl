%%% The supervision tree, in start order: receipts logger, metrics, the governor (entitlements),
%%% the mcp_server (Pub/Sub de-duplication), faults, the HTTP listener, readiness (last).
-module(tai_autonomics_sup).
-behaviour(supervisor).

-export([start_link/0, init/1]).

start_link() ->
    supervisor:start_link({local, ?MODULE}, ?MODULE, []).

init([]) ->
    Child = fun(M, Shutdown) ->
                    #{id => M, start => {M, start_link, []}, restart => permanent,
                      shutdown => Shutdown, type => worker, modules => [M]}
            end,
    {ok, {#{strategy => one_for_one, intensity => 5, period => 10},
          [Child(tai_log, 5000),
           Child(tai_metrics, 5000),
           Child(tai_governor, 5000),
           Child(tai_mcp_server, 5000),
           Child(tai_faults, 5000),
           Child(tai_http, 15000),
           Child(tai_ready, 5000)]}}.
