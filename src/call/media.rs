//! The media actor of a call: owns the call's media resources.
//!
//! It leases one RTP port pair per anchored leg when the call starts and holds them for the
//! call's life. The leases are plain values in the actor's state, so they return to the pool
//! however the actor ends: stopped, failed, or killed with its call.

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

#[cfg(test)]
use super::Fault;
use crate::media::ports::{PortAllocator, PortLease};

/// Media resources of one call. Spawned and supervised by the call supervisor.
pub struct MediaActor;

/// What the media actor starts with.
pub struct MediaArgs {
    /// The node's RTP port pool.
    pub ports: PortAllocator,
    /// The call's span.
    pub span: tracing::Span,
}

/// RTP ports of an anchored call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct MediaPorts {
    /// Port facing WhatsApp.
    pub whatsapp: u16,
    /// Port facing the business.
    pub business: u16,
}

/// Messages of [`MediaActor`].
#[derive(Debug)]
pub enum MediaMsg {
    /// The call's RTP ports.
    Ports(RpcReplyPort<MediaPorts>),
    /// Makes the actor fail (supervision tests).
    #[cfg(test)]
    Fault(Fault),
}

/// State of a running media actor.
pub struct Media {
    whatsapp: PortLease,
    business: PortLease,
}

impl Actor for MediaActor {
    type Msg = MediaMsg;
    type State = Media;
    type Arguments = MediaArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: MediaArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let whatsapp = args.ports.lease()?;
        let business = args.ports.lease()?;
        tracing::debug!(parent: &args.span, whatsapp = whatsapp.port(), business = business.port(), "media ports leased");
        Ok(Media { whatsapp, business })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        media: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            MediaMsg::Ports(reply) => {
                let _ = reply.send(MediaPorts {
                    whatsapp: media.whatsapp.port(),
                    business: media.business.port(),
                });
            }
            #[cfg(test)]
            MediaMsg::Fault(fault) => return fault.trigger("media"),
        }
        Ok(())
    }
}
