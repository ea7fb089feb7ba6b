pub mod alert;
pub mod engine;
pub mod event;
pub mod replay;
pub mod rules;
pub mod simulate;
pub mod time;
