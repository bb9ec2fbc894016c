%% Shared definitions of the tai_autonomics application.

%% Slots of the atomics array kept in the configuration (tai_conf:counters/0).
-define(C_READY, 1).        % 1 once the application is ready
-define(C_DRAINING, 2).     % 1 once a shutdown has begun
-define(C_FAULT_SEQ, 3).    % requests subject to fault injection, counted
-define(C_REQUESTS, 4).     % all requests answered
-define(C_INFLIGHT, 5).     % requests being handled now
-define(C_LOG_DROPPED, 6).  % request receipts dropped because stdout could not keep up
-define(C_SLOTS, 6).

-define(FAULTS, [none, slow, errors, leak, crash, noready, slowstart, delay, prod_errors, prod_slow, prod_delay]).
