//! Recovery plan and DR run calls of the REST API, and the plain JSON
//! calls a site uses to drive its peer's replicas during a DR run.

use vdc_dr::{Plan, Run};
use vdc_types::Task;

use crate::{seg, Client, ClientError};

impl Client {
    /// `GET /plans`.
    pub async fn list_plans(&self) -> Result<Vec<Plan>, ClientError> {
        self.get("/plans").await
    }

    /// `GET /plans/{name}`.
    pub async fn get_plan(&self, name: &str) -> Result<Plan, ClientError> {
        self.get(&format!("/plans/{}", seg(name))).await
    }

    /// `POST /plans`.
    pub async fn create_plan(&self, plan: &Plan) -> Result<Plan, ClientError> {
        self.post("/plans", plan).await
    }

    /// `DELETE /plans/{name}`.
    pub async fn delete_plan(&self, name: &str) -> Result<(), ClientError> {
        self.send(self.req(reqwest::Method::DELETE, &format!("/plans/{}", seg(name))))
            .await
    }

    /// `POST /plans/{name}/{operation}`: starts a run (its record).
    pub async fn run_plan(&self, name: &str, operation: &str) -> Result<Run, ClientError> {
        self.post(
            &format!("/plans/{}/{}", seg(name), seg(operation)),
            &serde_json::json!({}),
        )
        .await
    }

    /// `GET /dr-runs` (optionally of one plan).
    pub async fn list_dr_runs(&self, plan: Option<&str>) -> Result<Vec<Run>, ClientError> {
        match plan {
            Some(p) => self.get(&format!("/dr-runs?plan={}", seg(p))).await,
            None => self.get("/dr-runs").await,
        }
    }

    /// `GET /dr-runs/{id}`.
    pub async fn get_dr_run(&self, id: &str) -> Result<Run, ClientError> {
        self.get(&format!("/dr-runs/{}", seg(id))).await
    }

    /// `POST /dr-runs/{id}/continue`: past the prompt the run waits at.
    pub async fn continue_dr_run(&self, id: &str) -> Result<Run, ClientError> {
        self.post(
            &format!("/dr-runs/{}/continue", seg(id)),
            &serde_json::json!({}),
        )
        .await
    }

    /// `GET /dr-runs/{id}/report`: the readable report.
    pub async fn dr_run_report(&self, id: &str) -> Result<String, ClientError> {
        let run = self.get_dr_run(id).await?;
        Ok(vdc_dr::report::text(&run))
    }

    /// `GET {path}` as plain JSON.
    pub async fn get_value(&self, path: &str) -> Result<serde_json::Value, ClientError> {
        self.get(path).await
    }

    /// `POST {path}` with a JSON body, answered with plain JSON.
    pub async fn post_value(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<serde_json::Value, ClientError> {
        self.post(path, body).await
    }

    /// `POST {path}` answered with a task.
    pub async fn post_task(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<Task, ClientError> {
        self.post(path, body).await
    }

    /// `DELETE {path}`, answered with nothing or JSON.
    pub async fn delete_value(&self, path: &str) -> Result<serde_json::Value, ClientError> {
        self.send(self.req(reqwest::Method::DELETE, path)).await
    }
}
