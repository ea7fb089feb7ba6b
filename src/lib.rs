pub mod event;
pub mod rules;
pub mod time;
