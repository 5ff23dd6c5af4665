//! The queue's Lua scripts, each `lib.lua` + its own file, called by SHA (redis-rs falls back
//! to SCRIPT LOAD on NOSCRIPT, so a restarted Redis is handled transparently). Each script's
//! own body runs as a function followed by `flush()`, so what it buffered (run events,
//! ready jobs of a batch, finished flows: see lib.lua) is written whichever way the body
//! returns.

use std::sync::LazyLock;

use redis::Script;

macro_rules! script {
    ($name:ident, $file:literal) => {
        pub static $name: LazyLock<Script> = LazyLock::new(|| {
            Script::new(concat!(
                include_str!("lua/lib.lua"),
                "\nlocal result = (function()\n",
                include_str!($file),
                "\nend)()\nflush()\nreturn result\n"
            ))
        });
    };
}

script!(ENQUEUE, "lua/enqueue.lua");
script!(CLAIM, "lua/claim.lua");
script!(COMPLETE, "lua/complete.lua");
script!(FAIL, "lua/fail.lua");
script!(REAP, "lua/reap.lua");
script!(HEARTBEAT, "lua/heartbeat.lua");
script!(START_FLOWS, "lua/start_flows.lua");
script!(CANCEL_FLOW, "lua/cancel_flow.lua");
script!(RETRY_DEAD, "lua/retry_dead.lua");
script!(TRIM, "lua/trim.lua");
script!(RELEASE, "lua/release.lua");
