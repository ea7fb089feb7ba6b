pub mod alert;
pub mod engine;
pub mod event;
pub mod rules;
pub mod time;
