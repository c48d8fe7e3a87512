-- 0009: failed-login counts in the store.
--
-- The controller throttles failed logins per user name and per source
-- address (controller/throttle.go). Kept here, every controller of a
-- cluster counts the same failures, so that an attacker gains nothing by
-- spreading guesses over controllers, and a restart forgets nothing.
-- throttle_key is "user NAME" or "source ADDRESS".
CREATE TABLE login_failures (
	throttle_key text PRIMARY KEY,
	failures     integer NOT NULL,
	last_failure timestamptz NOT NULL,
	locked_until timestamptz
);
