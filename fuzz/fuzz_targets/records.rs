//! Every record of `proto/pushrelay/v1/` decoded from arbitrary bytes: no panic, and
//! decode → encode → decode gives the same record with a stable encoding.
//!
//! Input: one byte choosing the record type, then the encoded record.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pushrelay_fuzz::{Input, round_trip};
use pushrelay_proto::v1::{
    DeadLetter, DeliveryReceipt, KeyCredential, MailboxChange, Notification, NotificationBatch,
    PushRequest, Subscription, SubscriptionChange, Tenant, TenantFeedback, UnreadCount,
};

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let selector = input.byte();
    let bytes = input.rest();
    match selector % 12 {
        0 => drop(round_trip::<Notification>(bytes)),
        1 => drop(round_trip::<NotificationBatch>(bytes)),
        2 => drop(round_trip::<MailboxChange>(bytes)),
        3 => drop(round_trip::<UnreadCount>(bytes)),
        4 => drop(round_trip::<DeadLetter>(bytes)),
        5 => drop(round_trip::<TenantFeedback>(bytes)),
        6 => drop(round_trip::<PushRequest>(bytes)),
        7 => drop(round_trip::<DeliveryReceipt>(bytes)),
        8 => drop(round_trip::<SubscriptionChange>(bytes)),
        9 => drop(round_trip::<Subscription>(bytes)),
        10 => drop(round_trip::<KeyCredential>(bytes)),
        _ => drop(round_trip::<Tenant>(bytes)),
    }
});
