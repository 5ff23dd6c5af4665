//! Run ids: a ULID (time-sortable, 26 characters) and the queue partition the run lives in,
//! `<ulid>-<partition>`, so any replica finds a run's keys from its id alone.

const CROCKFORD: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// A new ULID string.
pub fn ulid() -> String {
    let ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis());
    let random: u128 = rand::random::<u128>() & ((1u128 << 80) - 1);
    let value = (ms << 80) | random;
    (0..26).rev().map(|i| CROCKFORD[((value >> (i * 5)) & 31) as usize] as char).collect()
}

/// When a run was created (ms since the epoch): the timestamp half of its ULID.
pub fn created_ms(run_id: &str) -> Option<u64> {
    let ulid = run_id.get(..10)?;
    ulid.bytes().try_fold(0u64, |acc, b| {
        let digit = CROCKFORD.iter().position(|c| *c == b)? as u64;
        Some(acc << 5 | digit)
    })
}

/// A run id in partition `partition`.
pub fn run_id(partition: usize) -> String {
    format!("{}-{partition}", ulid())
}

/// The partition of a run id, if it is well-formed for `partitions` partitions.
pub fn partition_of_run(run_id: &str, partitions: usize) -> Option<usize> {
    let (ulid, p) = run_id.rsplit_once('-')?;
    if ulid.len() != 26 || !ulid.bytes().all(|b| CROCKFORD.contains(&b)) {
        return None;
    }
    p.parse().ok().filter(|p| *p < partitions)
}

/// A task id: `<run_id>.<step_id>`.
pub fn task_id(run_id: &str, step_id: &str) -> String {
    format!("{run_id}.{step_id}")
}

/// Splits a task id into run id and step id.
pub fn split_task_id(task_id: &str) -> Option<(&str, &str)> {
    task_id.split_once('.')
}

/// Where the events of run topics (`runs.<run_id>`) live: in the run's queue partition,
/// written by the queue scripts themselves. Give this to `aura_bus::Bus::with_router`.
pub fn run_topic_router(keys: aura_queue::Keyspace) -> aura_bus::TopicRouter {
    std::sync::Arc::new(move |topic: &str| {
        let run_id = topic.strip_prefix("runs.")?;
        let p = partition_of_run(run_id, keys.partitions())?;
        Some(format!("{}ev:runs.{run_id}", keys.partition(p)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_ids_carry_their_partition() {
        let id = run_id(3);
        assert_eq!(partition_of_run(&id, 4), Some(3));
        assert_eq!(partition_of_run(&id, 3), None);
        assert_eq!(partition_of_run("nope", 4), None);
        let now =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
        let created = created_ms(&id).expect("a run id carries its creation time");
        assert!(now.abs_diff(created) < 5_000, "{created} vs {now}");
        let a = ulid();
        std::thread::sleep(std::time::Duration::from_millis(2));
        assert!(ulid() > a, "ulids sort by time");
    }
}
